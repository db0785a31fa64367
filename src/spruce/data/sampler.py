"""Which samples go into which batch: pure functions of (seed, epoch, step).

The training order of an epoch is a permutation seeded by ``(seed, epoch)``; global batch
``b`` is ``order[b·B : (b+1)·B]`` (the last partial batch is dropped) and rank ``r`` of
``W`` processes takes the ``r``-th contiguous ``B/W`` slice of it. So one process with
global batch B and W processes with B/W each see the same samples in the same steps, and
a run resumed at step ``b`` of an epoch loads exactly the batches it has not yet seen.
"""

from __future__ import annotations

import torch
from ..errors import SpruceError

_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9)


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """Seed of the augmentation of the sample at ``position`` of epoch ``epoch``."""
    return (seed * _MIX[0] + (epoch + 1) * _MIX[1] + position) % (2 ** 63)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    if not shuffle:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(sample_seed(seed, epoch, -1))
    return torch.randperm(n, generator=gen)


def steps_per_epoch(n: int, global_batch: int) -> int:
    if global_batch < 1:
        raise SpruceError(f"batch size must be >= 1; got {global_batch}")
    if n < global_batch:
        raise SpruceError(f"the training split has {n} samples, fewer than one global batch "
                         f"of {global_batch}; lower --batch-size")
    return n // global_batch


def check_world(global_batch: int, world: int) -> int:
    if global_batch % world:
        raise SpruceError(f"global batch {global_batch} does not split evenly over {world} "
                         f"processes; use a batch size divisible by {world}")
    return global_batch // world


def train_plan(n: int, global_batch: int, seed: int, epoch: int, rank: int = 0,
               world: int = 1, start: int = 0, shuffle: bool = True
               ) -> list[tuple[list[int], list[int]]]:
    """This rank's ``(indices, sample seeds)`` for the batches ``start..`` of ``epoch``."""
    local = check_world(global_batch, world)
    order = epoch_order(n, seed, epoch, shuffle)
    plan = []
    for b in range(start, steps_per_epoch(n, global_batch)):
        lo = b * global_batch + rank * local
        idx = order[lo:lo + local].tolist()
        plan.append((idx, [sample_seed(seed, epoch, p) for p in range(lo, lo + local)]))
    return plan


def eval_plan(n: int, batch: int, rank: int = 0, world: int = 1
              ) -> list[tuple[list[int], None]]:
    """Every sample once over all ranks: rank r takes ``r, r+W, ...``, in batches."""
    mine = list(range(rank, n, world))
    return [(mine[i:i + batch], None) for i in range(0, len(mine), batch)]
