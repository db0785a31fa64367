"""Splits for data that is not images or GLUE text: any samples, batched by a function.

The training loop asks a split for ``batch(indices, seeds)`` alone (``train_plan`` picks
the indices), so anything indexable fits once it says how samples become a batch:

    from spruce import data
    split = data.TensorDict({"x": x, "teacher": teacher_out})      # batch: {k: t[idx]}
    split = data.Samples([{"input_ids": ids, "teacher": t} for ...])  # token lists padded
    splits = data.DataSplits.of(split, test=None, name="my-corpus")

Neither augments, so ``seeds`` are ignored: a sample is the same whichever step, rank or
resumed run loads it. Batches are dicts of tensors, as the text batches are, so
``to_device`` and DDP handle them; a training ``objective`` (``spruce.train.train(...,
objective=fn(net, batch) -> loss)``) reads whatever keys it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..errors import SpruceError
from .base import Split


def pad_collate(items: list[Mapping[str, Any]], pad_value: int = 0,
                mask_key: str | None = "attention_mask") -> dict[str, torch.Tensor]:
    """Dict samples → a dict batch. Tensors (and numbers) are stacked; lists of ints
    (token ids of any length) are padded with ``pad_value`` to the longest in the batch
    into int64 ``[B, L]``. If any key was padded and ``mask_key`` is not among the keys,
    ``batch[mask_key]`` is the 0/1 mask ``[B, L]`` of the first padded key's real tokens
    (the ``attention_mask`` a Hugging Face encoder takes)."""
    if not items:
        raise SpruceError("pad_collate got an empty batch; a plan never asks for one")
    out: dict[str, torch.Tensor] = {}
    lengths = None
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (list, tuple)):
            out[key], lens = _pad(values, pad_value, key)
            lengths = lengths if lengths is not None else lens
        else:
            out[key] = torch.tensor(values)
    if lengths is not None and mask_key is not None and mask_key not in out:
        width = max(lengths)
        out[mask_key] = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return out


def _pad(seqs: list[Sequence[int]], pad_value: int, key: str) -> tuple[torch.Tensor, list[int]]:
    lengths = [len(s) for s in seqs]
    if min(lengths) == 0:
        raise SpruceError(f"pad_collate: '{key}' holds an empty sequence; drop empty samples "
                         "(an encoder cannot pool over zero tokens)")
    padded = torch.full((len(seqs), max(lengths)), pad_value, dtype=torch.int64)  # (B, L)
    for r, s in enumerate(seqs):
        padded[r, :len(s)] = torch.as_tensor(s, dtype=torch.int64)
    return padded, lengths


class Samples(Split):
    """Any indexable samples; ``collate(list of samples) -> batch`` (default
    :func:`pad_collate`, for dict samples). Use it for variable-length token lists."""

    def __init__(self, items: Sequence[Any],
                 collate: Callable[[list[Any]], Any] = pad_collate):
        self.items, self.collate_fn = items, collate

    def __len__(self) -> int:
        return len(self.items)

    def item(self, index: int, gen: torch.Generator | None) -> Any:
        return self.items[index]

    def collate(self, items: list[Any]) -> Any:
        return self.collate_fn(items)


class TensorDict(Split):
    """Equal-length tensors by name (``[N, ...]`` each); a batch is ``{name: t[idx]}``,
    one indexing operation per tensor."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        if not tensors:
            raise SpruceError("TensorDict needs at least one tensor")
        sizes = {k: int(t.shape[0]) for k, t in tensors.items()}
        if len(set(sizes.values())) != 1:
            raise SpruceError(f"TensorDict tensors must share their first dimension; got {sizes}")
        self.tensors = dict(tensors)
        self.n = next(iter(sizes.values()))

    def __len__(self) -> int:
        return self.n

    def batch(self, indices: Sequence[int], seeds: Sequence[int] | None = None
              ) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        return {k: t[idx] for k, t in self.tensors.items()}
