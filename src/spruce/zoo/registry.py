"""Dataset table and model registry shared by every zoo module.

Each model file registers its builder with ``@register("name")``. A builder is a
plain function ``builder(ds: Dataset, num_classes: int, **kwargs) -> nn.Module``
that reads the input geometry from ``ds`` and its own options from ``kwargs``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import nn

Modality = Literal["image", "text"]


@dataclass(frozen=True)
class Dataset:
    """What a model needs to know about a dataset: input geometry and label count."""

    name: str
    modality: Modality
    num_classes: int
    image_size: int | None = None  # H == W, image datasets only
    channels: int = 3  # image datasets only
    seq_len: int | None = None  # default token length, text datasets only


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("cifar10", "image", num_classes=10, image_size=32),
        Dataset("tiny-imagenet", "image", num_classes=200, image_size=64),
        Dataset("imagenet", "image", num_classes=1000, image_size=224),
        Dataset("qqp", "text", num_classes=2, seq_len=128),
    )
}

# dataset used when build()/example_input() get dataset=None
DEFAULT_DATASET: dict[Modality, str] = {"image": "imagenet", "text": "qqp"}

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class Entry:
    builder: Builder
    modality: Modality


REGISTRY: dict[str, Entry] = {}


def register(name: str, modality: Modality = "image") -> Callable[[Builder], Builder]:
    """Decorator: add ``builder`` to the zoo under ``name``."""

    def deco(builder: Builder) -> Builder:
        if name in REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        REGISTRY[name] = Entry(builder, modality)
        return builder

    return deco
