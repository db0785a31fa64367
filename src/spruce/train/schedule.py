"""Schedules as pure functions of the step, kept apart from any state.

- :func:`density_at` — the cubic gradual-pruning schedule of Zhu & Gupta (2017), "To prune,
  or not to prune": ``d(t) = d_f + (d_0 − d_f)·(1 − (t − t_0)/(t_1 − t_0))³`` for
  ``t_0 ≤ t ≤ t_1`` (written for the kept fraction, so ``d = 1 − s``); it prunes fast early,
  when many weights are redundant, and slowly near the end.
- :func:`prune_steps` — the steps at which the gradual schedule prunes: every ``every``
  steps from ``t_0`` and always at ``t_1``, where the final density is reached exactly.
- :func:`lr_at` — learning rate: linear warm-up, then constant, step decay or cosine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

LR_SCHEDULES = ("constant", "step", "cosine")


def density_at(step: int, start: int, end: int, d0: float, d_final: float) -> float:
    """Kept fraction at ``step`` under the cubic schedule from ``d0`` at ``start`` to
    ``d_final`` at ``end`` (constant before and after)."""
    if end < start:
        raise ValueError(f"gradual pruning ends (step {end}) before it starts (step {start})")
    if step <= start:
        return float(d0)
    if step >= end:
        return float(d_final)
    frac = (step - start) / (end - start)
    return float(d_final + (d0 - d_final) * (1.0 - frac) ** 3)


def prune_steps(start: int, end: int, every: int) -> list[int]:
    """Steps at which the schedule prunes: ``start + every, start + 2·every, … < end``,
    then ``end`` (the step where the final density is reached)."""
    if every < 1:
        raise ValueError(f"prune_every must be >= 1 step; got {every}")
    return [*range(start + every, end, every), end] if end > start else [end]


def lr_at(step: int, total: int, base_lr: float, schedule: str = "cosine", warmup: int = 0,
          milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1) -> float:
    """Learning rate for the optimizer step ``step`` (0-based) of ``total``.

    ``warmup`` steps ramp linearly up to ``base_lr``; then ``constant``; ``step``
    multiplies by ``gamma`` at each milestone (fractions of ``total``); ``cosine``
    anneals from ``base_lr`` to 0 over the steps after the warm-up.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown LR schedule {schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    if schedule == "step":
        passed = sum(step >= round(m * total) for m in milestones)
        return base_lr * gamma ** passed
    span = max(1, total - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))
