"""Datasets for training, read from local files (nothing is ever downloaded).

    from spruce import data
    ds = data.load("digits")                                  # built in (scikit-learn)
    ds = data.load("/data/cifar-10-batches-py", "cifar10")    # standard pickle batches
    ds = data.load("/data/tiny-imagenet-200")                 # format detected from the layout

Formats: ``digits`` (built in), ``cifar10`` (python-pickle batches), ``tiny-imagenet``
(standard folder layout), ``imagenet`` (class folders of JPEGs), ``qqp`` (GLUE TSV).
A missing or malformed folder raises an error naming the file and what was expected.
Other data (token lists, teacher outputs for distillation) goes in a :class:`Samples` or
:class:`TensorDict` split and ``DataSplits.of(train, test)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import SpruceError
from .base import DataSplits, Split, TensorImages
from .batches import Samples, TensorDict, pad_collate
from .cifar import load_cifar10
from .digits import load_digits
from .folders import load_imagenet, load_tiny_imagenet
from .qqp import HashTokenizer, load_qqp
from .sampler import eval_plan, sample_seed, steps_per_epoch, train_plan

READERS: dict[str, Callable[..., DataSplits]] = {
    "cifar10": load_cifar10,
    "tiny-imagenet": load_tiny_imagenet,
    "imagenet": load_imagenet,
    "qqp": load_qqp,
}
BUILTIN = {"digits": load_digits}

__all__ = ["BUILTIN", "READERS", "DataSplits", "HashTokenizer", "Samples", "Split",
           "TensorDict", "TensorImages", "detect_format", "eval_plan", "formats", "load",
           "pad_collate", "sample_seed", "steps_per_epoch", "train_plan"]


def formats() -> list[str]:
    return [*BUILTIN, *READERS]


def detect_format(path: Path) -> str:
    """The format of a dataset folder, from the files the standard layouts have."""
    if not path.exists():
        raise FileNotFoundError(f"dataset folder {path} does not exist; give a folder in one of "
                                f"the formats {', '.join(READERS)} or the built-in 'digits'")
    checks = [("cifar10", ["data_batch_1", "test_batch", "cifar-10-batches-py"]),
              ("tiny-imagenet", ["wnids.txt", "tiny-imagenet-200"]),
              ("qqp", ["train.tsv", "dev.tsv"]),
              ("imagenet", ["train"])]
    for name, marks in checks:
        if any((path / m).exists() for m in marks):
            return name
    raise SpruceError(f"{path}: cannot tell the dataset format (no data_batch_1, wnids.txt, "
                     "train.tsv or train/ inside); pass --dataset-format "
                     f"{'|'.join(READERS)}")


def load(data: str | Path, format: str | None = None, **options: Any) -> DataSplits:
    """Read a dataset. ``options`` go to the reader: ``augment``, ``image_size`` (digits,
    imagenet), ``tokenizer`` and ``max_len`` (qqp); options a reader lacks are ignored."""
    name = str(data)
    if format is None and name in BUILTIN:
        format = name
    if format in BUILTIN:
        return _call(BUILTIN[format], **options)
    path = Path(data)
    format = format or detect_format(path)
    if format not in READERS:
        raise SpruceError(f"unknown dataset format {format!r}; valid: {', '.join(formats())}")
    return _call(READERS[format], path, **options)


def _call(reader: Callable[..., DataSplits], *args: Any, **options: Any) -> DataSplits:
    import inspect

    accepted = inspect.signature(reader).parameters
    return reader(*args, **{k: v for k, v in options.items()
                            if k in accepted and v is not None})
