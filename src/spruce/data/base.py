"""What every dataset reader returns: two splits and the facts a trainer needs.

A :class:`Split` is a sized collection of samples. ``batch(indices, seeds)`` builds one
batch; ``seeds`` (one per sample, or None for evaluation) seed the augmentation of each
sample, so a sample is augmented the same way whichever process or resumed run loads it.
Image batches are ``(x [B, C, H, W] float32, y [B] int64)``; text batches are dicts of
``[B, L]`` int64 tensors with ``labels [B]``; other batches (``batches.py``) are whatever
their collate function builds, dicts of tensors for the loop's ``to_device``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import SpruceError
from .transforms import Transform


class Split:
    """Base class: subclasses define ``__len__``, ``item`` and ``collate``."""

    def __len__(self) -> int:
        raise NotImplementedError

    def item(self, index: int, gen: torch.Generator | None) -> Any:
        raise NotImplementedError

    def collate(self, items: list[Any]) -> Any:
        raise NotImplementedError

    def batch(self, indices: Sequence[int], seeds: Sequence[int] | None = None) -> Any:
        gens = [None] * len(indices) if seeds is None else \
            [torch.Generator().manual_seed(int(s)) for s in seeds]
        return self.collate([self.item(int(i), g) for i, g in zip(indices, gens, strict=True)])


def stack_images(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*items, strict=True)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


class TensorImages(Split):
    """Images held in memory: ``images [N, C, H, W]`` (uint8 or float), ``labels [N]``.

    With ``transform=None`` the images are returned as they are (already float and
    normalised) and a batch is one indexing operation.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 transform: Transform | None = None):
        if images.shape[0] != labels.shape[0]:
            raise SpruceError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images, self.labels, self.transform = images, labels.to(torch.int64), transform

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def item(self, index: int, gen: torch.Generator | None) -> tuple[torch.Tensor, int]:
        img = self.images[index]
        return (img if self.transform is None else self.transform(img, gen)), \
            int(self.labels[index])

    def collate(self, items: list[tuple[torch.Tensor, int]]):
        return stack_images(items)

    def batch(self, indices: Sequence[int], seeds: Sequence[int] | None = None):
        if self.transform is None:
            idx = torch.as_tensor(list(indices), dtype=torch.int64)
            return self.images[idx].float(), self.labels[idx]
        return super().batch(indices, seeds)


@dataclass
class DataSplits:
    """A dataset read from disk (or the built-in digits), ready for training."""

    name: str  # format name: digits, cifar10, tiny-imagenet, imagenet, qqp
    train: Split
    test: Split | None  # the labelled held-out split (CIFAR test batch, ImageNet val, GLUE
    #                     dev); None only for ``custom`` data trained with an objective
    num_classes: int
    task: str  # "image", "text" or "custom": decides the batch layout and the metrics
    zoo_dataset: str  # the zoo variant whose input geometry fits (zoo.build(..., dataset=))
    source: str  # where it was read from
    notes: list[str] = field(default_factory=list)  # what a reader adapted or skipped

    @classmethod
    def of(cls, train: Split, test: Split | None = None, name: str = "custom",
           source: str = "memory") -> DataSplits:
        """Splits of any batches (e.g. :class:`~spruce.data.Samples`) for a run with an
        ``objective``: no classes, no zoo geometry, no classification metrics."""
        return cls(name, train, test, 0, "custom", "", source)

    def describe(self) -> str:
        test = len(self.test) if self.test is not None else 0
        return (f"{self.name} from {self.source}: {len(self.train)} train / {test} "
                f"test samples, {self.num_classes} classes")
