"""spruce.train — training, fine-tuning and pruning during training.

    from spruce.train import TrainConfig, train
    result = train(TrainConfig(model="tiny_cnn", data="digits", epochs=10, lr=0.05,
                               pattern="group", density=0.5, prune_mode="gradual",
                               exclude=("fc",), checkpoint_dir="runs/digits-group"))
    result.metrics          # {"loss": ..., "top1": ..., "top5": ...}

``train`` also takes a ready ``nn.Module`` (``model=``) and data (``data=``). The same run
from the command line is ``spruce train tiny_cnn --data digits ...``; on several GPUs or
machines, ``torchrun --nproc-per-node N -m spruce.train tiny_cnn --data digits ...``.
"""

from __future__ import annotations

from torch import nn

from ..data import DataSplits
from .config import TrainConfig
from .models import TinyCNN
from .runner import NonFiniteLoss, Trainer, TrainResult
from .schedule import density_at, lr_at, prune_steps

__all__ = ["NonFiniteLoss", "TinyCNN", "TrainConfig", "TrainResult", "density_at", "lr_at",
           "prune_steps", "train"]


def train(cfg: TrainConfig, model: nn.Module | None = None,
          data: DataSplits | None = None) -> TrainResult:
    """Run (or resume) the training described by ``cfg``; returns the final metrics.

    Under ``torchrun`` every process calls this; they form one DDP group.
    """
    from . import distributed

    cfg = cfg.validated()
    d = distributed.setup(cfg.device)
    try:
        return Trainer(cfg, d, model, data).fit()
    finally:
        distributed.cleanup(d)
