"""``TrainConfig``: everything a training run depends on, one field each, with why.

The fields in :data:`RESUME_KEYS` decide the trajectory of the weights; a checkpoint
records them, and ``--resume`` refuses a checkpoint whose values differ (another model,
pattern, seed, batch...). The other fields (where files go, progress, workers) may change
between a run and its resumption.
"""

from __future__ import annotations

import hashlib
import numbers
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import SpruceError
from .schedule import LR_SCHEDULES

OPTIMIZERS = ("sgd", "adamw")
PRUNE_MODES = ("oneshot", "gradual", "during")


@dataclass
class TrainConfig:
    # -- what is trained, on what --------------------------------------------------------
    model: str = "tiny_cnn"  # zoo name, "tiny_cnn" (the demo CNN), FILE.py:FN, or a label
    data: str = "digits"  # "digits" (built in) or a dataset folder
    dataset_format: str | None = None  # cifar10 | tiny-imagenet | imagenet | qqp; None: detect
    num_classes: int | None = None  # override the model's class count (default: the data's)
    image_size: int | None = None  # digits/imagenet input side (default: the zoo geometry)
    tokenizer: str | None = None  # qqp: local Hugging Face tokenizer folder (default: hashing)
    augment: bool = True  # standard augmentation of the training split (where it has one)
    init: str | None = None  # weights to start from (a spruce.save file), e.g. a dense model
    # -- optimisation ---------------------------------------------------------------------
    epochs: int = 10  # passes over the training split
    steps: int | None = None  # optimizer steps of the run, in place of epochs (the last
    #                           epoch may be partial); None: epochs × steps per epoch
    batch_size: int = 64  # global batch: split evenly over the processes of a DDP run
    eval_batch_size: int = 256  # per process, evaluation only
    optimizer: str = "sgd"  # sgd (with momentum, Nesterov off) | adamw
    lr: float = 0.05  # peak learning rate
    momentum: float = 0.9  # SGD momentum (AdamW uses beta1 = 0.9)
    weight_decay: float = 5e-4  # decoupled for AdamW; L2 for SGD; never on mask parameters
    schedule: str = "cosine"  # LR schedule: constant | step | cosine
    warmup_steps: int = 0  # linear LR warm-up
    lr_milestones: tuple[float, ...] = (0.5, 0.75)  # step schedule: fractions of the run
    lr_gamma: float = 0.1  # step schedule: factor at each milestone
    amp: bool = False  # mixed precision on GPU (ignored on CPU, with a note)
    amp_dtype: str = "bf16"  # bf16 (no loss scaling) | fp16 (with a GradScaler)
    # -- pruning ----------------------------------------------------------------------
    pattern: str | None = None  # element | N:M | block | group | channel; None: dense run
    density: float | None = None  # final kept fraction (N:M fixes it to N/M)
    block: tuple[int, int] = (8, 8)  # block pattern tile (bo, bk)
    prune_mode: str | None = None  # oneshot | gradual | during (default: oneshot)
    criterion: str | dict = "magnitude"  # registry name or spec dict ({"name": .., **opts})
    scope: str = "uniform"  # uniform | global | lamp allocation over layers
    exclude: tuple[str, ...] = ()  # module-name globs left dense (e.g. the classifier)
    prune_start: int = 0  # step of the one-shot prune / start of the gradual schedule
    prune_end: int | None = None  # gradual: step where the final density is reached
    #                               (default: 3/4 of the run, leaving time to recover)
    prune_every: int | None = None  # gradual: steps between prunings (default: ~20 events)
    # -- reproducibility and files -----------------------------------------------------
    seed: int = 0  # model initialisation, data order, augmentation, dropout
    deterministic: bool = False  # torch.use_deterministic_algorithms (bitwise reruns)
    threads: int | None = None  # torch.set_num_threads per process (None: torch default)
    device: str = "auto"  # auto | cpu | cuda (under torchrun: cuda:LOCAL_RANK)
    workers: int = 0  # DataLoader worker processes per rank for file datasets
    checkpoint_dir: str | None = None  # where checkpoints, CSV logs and the PNG curve go
    checkpoint_every: int = 0  # also checkpoint every N steps (0: at epoch ends only)
    keep_checkpoints: int = 2  # newest step_* folders kept; older ones are deleted
    resume: bool = False  # continue from the newest checkpoint in checkpoint_dir
    output: str | None = None  # final model (spruce.save format)
    log_every: int = 10  # steps between rows of the training CSV log
    eval_every: int = 0  # evaluate every N steps and at the last (0: at each epoch end)
    progress: bool = True  # rich progress bar on rank 0
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes kept in the files

    def validated(self) -> TrainConfig:
        """A copy with defaults resolved; raises SpruceError naming the bad field, its
        option and its valid range."""
        cfg = TrainConfig(**{f.name: getattr(self, f.name) for f in fields(self)})
        _check_choice("optimizer", cfg.optimizer, OPTIMIZERS)
        _check_choice("schedule", cfg.schedule, LR_SCHEDULES)
        _check_choice("amp_dtype", cfg.amp_dtype, ("bf16", "fp16"))
        _check_device(cfg.device)
        for name, lo, hi in RANGES:
            _check_range(name, getattr(cfg, name), lo, hi)
        if cfg.density is not None and not 0 < cfg.density <= 1:
            raise _field_error("density", "a kept fraction in (0, 1]", cfg.density)
        if cfg.lr is None or not cfg.lr > 0:
            raise _field_error("lr", "> 0", cfg.lr)
        if cfg.weight_decay is None or not cfg.weight_decay >= 0:
            raise _field_error("weight_decay", ">= 0", cfg.weight_decay)
        if cfg.resume and not cfg.checkpoint_dir:
            raise ValueError("resume needs checkpoint_dir (the folder the run wrote)")
        if cfg.pattern is None:
            if cfg.prune_mode is not None or cfg.density is not None:
                raise ValueError("prune_mode/density given without a pattern; add --pattern")
        else:
            cfg.prune_mode = cfg.prune_mode or "oneshot"
            _check_choice("prune_mode", cfg.prune_mode, PRUNE_MODES)
        cfg.block = tuple(int(b) for b in cfg.block)
        cfg.exclude = tuple(cfg.exclude)
        cfg.lr_milestones = tuple(float(m) for m in cfg.lr_milestones)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


OPTIONAL = ("steps", "prune_end", "prune_every", "threads", "num_classes", "image_size")

RESUME_KEYS = ("model", "data", "dataset_format", "num_classes", "image_size", "tokenizer",
               "augment", "init", "epochs", "steps", "batch_size", "optimizer", "lr", "momentum",
               "weight_decay", "schedule", "warmup_steps", "lr_milestones", "lr_gamma", "amp",
               "amp_dtype", "pattern", "density", "block", "prune_mode", "criterion", "scope",
               "exclude", "prune_start", "prune_end", "prune_every", "seed")


def fingerprint(cfg: TrainConfig) -> dict[str, Any]:
    """The fields a resumed run must share with the checkpoint, JSON-ready."""
    d = cfg.to_dict()
    return {k: d[k] for k in RESUME_KEYS}


def config_hash(cfg: TrainConfig) -> str:
    blob = json.dumps(fingerprint(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def resume_mismatch(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """``'field: checkpoint X, now Y'`` for every resume key that differs."""
    now = fingerprint(cfg)
    return [f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in RESUME_KEYS
            if saved.get(k) != now[k]]


def _check_choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise _named(f"unknown {name} {value!r}; valid: {', '.join(valid)}", name)


# (field, lowest, highest) of the integer fields; None: no bound, or the field is optional
RANGES: tuple[tuple[str, int, int | None], ...] = (
    ("epochs", 1, None), ("batch_size", 1, None), ("eval_batch_size", 1, None),
    ("log_every", 1, None), ("keep_checkpoints", 1, None), ("steps", 1, None),
    ("eval_every", 0, None), ("checkpoint_every", 0, None), ("warmup_steps", 0, None),
    ("prune_start", 0, None), ("prune_end", 0, None), ("prune_every", 1, None),
    ("threads", 1, None), ("workers", 0, None), ("num_classes", 1, None),
    ("image_size", 1, None), ("seed", 0, None))


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _field_error(name: str, valid: str, value: Any) -> SpruceError:
    return _named(f"{name} ({_option(name)}) must be {valid}; got {value!r}", name)


def _named(message: str, name: str) -> SpruceError:
    """A SpruceError whose message names the field itself (no prefix added)."""
    err = SpruceError(message)
    err.field = name
    return err


def _check_range(name: str, value: Any, lo: int, hi: int | None) -> None:
    if value is None and name in OPTIONAL:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _field_error(name, "an integer", value)
    if value < lo or (hi is not None and value > hi):
        raise _field_error(name, f">= {lo}" if hi is None else f"in [{lo}, {hi}]", value)


def _check_device(device: Any) -> None:
    import re

    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise _named(f"device (--device) {device!r} is not one of auto, cpu, cuda, cuda:N",
                     "device")
