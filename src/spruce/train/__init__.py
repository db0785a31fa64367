"""spruce.train — training, fine-tuning and pruning during training.

    from spruce.train import TrainConfig, train
    result = train(TrainConfig(model="tiny_cnn", data="digits", epochs=10, lr=0.05,
                               pattern="group", density=0.5, prune_mode="gradual",
                               exclude=("fc",), checkpoint_dir="runs/digits-group"))
    result.metrics          # {"loss": ..., "top1": ..., "top5": ...}

``train`` also takes a ready ``nn.Module`` (``model=``) and data (``data=``). The same run
from the command line is ``spruce train tiny_cnn --data digits ...``; on several GPUs or
machines, ``torchrun --nproc-per-node N -m spruce.train tiny_cnn --data digits ...``.

Without labels — distillation, learned masks over frozen weights — the loss and the
metrics are hooks (``hooks.py``), and any batches fit (``spruce.data.Samples``)::

    def objective(net, batch):           # -> scalar loss, minimised in place of the CE
        return F.mse_loss(net(batch["x"]), batch["teacher"])
    result = train(TrainConfig(optimizer="adamw", lr=0.05, steps=300, batch_size=32,
                               eval_every=50),
                   model, data=TensorDict({"x": x, "teacher": y}), objective=objective,
                   evaluator=lambda model: {"mse": held_out_mse(model)})
    result.history       # [{"step": 50, "epoch": .., "mse": .., "density": ..}, ...]
"""

from __future__ import annotations

from contextlib import nullcontext

from torch import nn

from ..paths import check_output_dir, check_output_file

from ..data import DataSplits, Split
from .config import TrainConfig
from .guard import FolderLock, Interrupted, OutputNotWritten
from .hooks import Evaluator, Objective
from .models import TinyCNN
from .runner import NonFiniteLoss, Trainer, TrainResult
from .schedule import density_at, lr_at, prune_steps

__all__ = ["Evaluator", "Interrupted", "NonFiniteLoss", "Objective", "OutputNotWritten",
           "TinyCNN", "TrainConfig", "TrainResult", "density_at", "lr_at", "prune_steps",
           "train"]


def train(cfg: TrainConfig, model: nn.Module | None = None,
          data: DataSplits | Split | None = None, objective: Objective | None = None,
          evaluator: Evaluator | None = None) -> TrainResult:
    """Run (or resume) the training described by ``cfg``; returns the final metrics.

    ``objective(net, batch) -> loss`` replaces the cross-entropy and ``evaluator(model) ->
    {name: value}`` the classification metrics (see ``spruce.train.hooks``); a resumed run
    is given the same hooks. ``data`` may be a bare split (no test split then). Under
    ``torchrun`` every process calls this; they form one DDP group.

    The output file and checkpoint folder are checked writable before anything runs; the
    checkpoint folder is locked for the run (a second run on it fails at once). Ctrl-C
    stops after the current step with a checkpoint (:class:`Interrupted`); a final model
    that cannot be written is kept in the checkpoint folder (:class:`OutputNotWritten`).
    """
    from . import distributed

    cfg = cfg.validated()
    if cfg.output:  # a run must not end by failing to write its result
        check_output_file(cfg.output, "output")
    if cfg.checkpoint_dir:
        check_output_dir(cfg.checkpoint_dir, "checkpoint_dir")
    d = distributed.setup(cfg.device)
    lock = FolderLock(cfg.checkpoint_dir) if cfg.checkpoint_dir and d.is_main else None
    try:
        with lock or nullcontext():
            return Trainer(cfg, d, model, data, objective, evaluator).fit()
    finally:
        distributed.cleanup(d)
