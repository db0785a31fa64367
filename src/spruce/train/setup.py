"""Building the pieces of a run: data, model, optimizer, determinism, resumption checks."""

from __future__ import annotations

import os
import random
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import data as datasets
from ..errors import SpruceError
from ..io import load_stored, read
from ..criteria.during_training import TrainableMask
from .config import TrainConfig, resume_mismatch
from .distributed import Dist
from .evaluate import logits_and_labels, to_device
from .models import build_model

ORIGINAL = ".parametrizations.weight.original"


def load_data(cfg: TrainConfig) -> datasets.DataSplits:
    return datasets.load(cfg.data, cfg.dataset_format, augment=cfg.augment,
                         image_size=cfg.image_size, tokenizer=cfg.tokenizer)


def make_model(cfg: TrainConfig, data: datasets.DataSplits) -> nn.Module:
    return build_model(cfg.model, cfg.num_classes or data.num_classes, data.zoo_dataset,
                       cfg.seed)


def check_classes(model: nn.Module, data: datasets.DataSplits, cfg: TrainConfig) -> None:
    """One forward on two held-out samples: the model must output the data's class count."""
    batch = data.test.batch(list(range(min(2, len(data.test)))))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits, _ = logits_and_labels(model, to_device(batch, device))
    except (RuntimeError, ValueError, TypeError) as e:
        shape = tuple(batch[0].shape) if isinstance(batch, tuple) else "a text batch"
        raise ValueError(f"model {cfg.model!r} cannot run on {data.name} inputs {shape}: {e}; "
                         "build it for this dataset's geometry") from None
    finally:
        model.train(was_training)
    if logits.shape[-1] != data.num_classes:
        raise ValueError(f"model {cfg.model!r} outputs {logits.shape[-1]} classes but the "
                         f"{data.name} data at {data.source} has {data.num_classes}; build "
                         f"the model with num_classes={data.num_classes}")


def load_init(model: nn.Module, path: str) -> nn.Module:
    """``model`` holding the weights (and masks) of the ``spruce.save`` file ``path``.

    Converted and compacted files describe inference models whose layers are not the
    trainable layers of ``model``: they are refused, naming the file to use instead."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"init weights {path}: no such file (a spruce.save file)")
    stored = read(path)  # once: the header is checked here and loaded from below
    kind = stored.kind
    if kind in ("converted", "compacted"):
        made_by = "spruce convert" if kind == "converted" else "spruce compact"
        raise SpruceError(f"--init: this is a {kind} model (written by {made_by}): its layers "
                          "are inference modules, not the model's trainable layers; start "
                          "from the pruned or dense file it was made from (spruce prune / "
                          "spruce train --output)", path=path)
    loaded = load_stored(stored, model)
    return loaded if loaded is not None else model


def canonical_name(name: str) -> str:
    """Parameter name with mask parametrizations folded away (``conv.weight``)."""
    return name.replace(ORIGINAL, ".weight")


def named_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters sorted by canonical name: the optimizer sees the same order
    whether or not masks are attached yet (resuming attaches them before loading)."""
    return sorted(((canonical_name(n), p) for n, p in model.named_parameters()
                   if p.requires_grad), key=lambda t: t[0])


def attached_trainables(model: nn.Module, known: list[TrainableMask]) -> list[TrainableMask]:
    """Trainable masks the caller attached before the run (``attach_learned``): they get
    their regularizer and ``after_step`` like those ``prune_mode="during"`` attaches, and
    stay attached at the end (the caller hardens them)."""
    ids = {id(t) for t in known}
    return [m for m in model.modules() if isinstance(m, TrainableMask) and id(m) not in ids]


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Weights decay; the parameters of trainable masks (gates, thresholds) do not."""
    mask_ids = {id(p) for m in model.modules() if isinstance(m, TrainableMask)
                for p in m.parameters()}
    params = named_params(model)
    groups = [{"params": [p for _, p in params if id(p) not in mask_ids],
               "weight_decay": cfg.weight_decay},
              {"params": [p for _, p in params if id(p) in mask_ids], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))


def model_signature(model: nn.Module) -> list[list[Any]]:
    """Canonical parameter names and shapes: a checkpoint must fit them."""
    return [[n, list(p.shape)] for n, p in named_params(model)]


def check_resume(state: dict[str, Any], cfg: TrainConfig, model: nn.Module, path) -> None:
    diffs = resume_mismatch(state.get("fingerprint", {}), cfg)
    if diffs:
        raise ValueError(f"{path}: cannot resume a run configured differently — "
                         + "; ".join(diffs) + ". Use the same settings, or another "
                         "--checkpoint-dir for a new run")
    if state.get("signature") != model_signature(model):
        raise ValueError(f"{path}: the checkpoint's parameters do not match model "
                         f"{cfg.model!r}; it was written for another model or variant")


def seed_everything(seed: int, rank: int) -> None:
    torch.manual_seed(seed * 1000 + rank)
    np.random.seed((seed * 1000 + rank) % 2 ** 32)
    random.seed(seed * 1000 + rank)


def set_determinism(cfg: TrainConfig, device: torch.device) -> list[str]:
    notes = []
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if cfg.amp and device.type != "cuda":
        notes.append("--amp ignored: mixed precision is for GPUs; training in fp32 on CPU")
    return notes


def wrap_ddp(model: nn.Module, d: Dist) -> nn.Module:
    if not d.active:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DDP(model, device_ids=[d.device] if d.device.type == "cuda" else None)
