"""Wanda (Sun et al. 2023): score ``|W_ij| · ‖X_j‖₂``, inputs through the pruned layers.

``‖X_j‖₂`` is the norm of input feature j over every calibration row (token, or output
position of a convolution). The comparison group follows the pattern: each output row for
``element`` (as in the paper; the layer's exact kept count is spread over the rows, the
first rows keeping one more when it does not divide), each run of M for N:M, tiles for
``block``, columns for ``group`` and rows for ``channel`` (the pattern's group score is the
sum of squared entry scores). Weights are not changed.
"""

from __future__ import annotations

import torch

from ...calibrate import InputStats
from ...patterns import Pattern
from ...patterns.base import kept_count
from ..base import register
from .base import OneShot, rowwise_keep


def wanda_scores(view: torch.Tensor, stats: InputStats) -> torch.Tensor:
    """``|W| · ‖X_j‖₂`` for a weight view ``[R, K]``."""
    return view.abs() * stats.sumsq.to(view.device).clamp_min(0).sqrt()[None, :]


def _element(name, view, stats, pattern, density, alive, crit):
    total = kept_count(density, view.numel())
    return rowwise_keep(wanda_scores(view, stats), total, alive), None


def _by_pattern(name, view, stats, pattern: Pattern, density, alive, crit):
    scores = wanda_scores(view, stats).cpu()
    alive = None if alive is None else alive.cpu()
    return pattern.compute_mask(scores, density, alive).to(view.device), None


@register("wanda")
class Wanda(OneShot):
    """Wanda scores per pattern; ``damp`` and ``blocksize`` are unused (kept for a common
    signature with SparseGPT)."""

    solvers = {"element": _element, "vector": _by_pattern, "block": _by_pattern,
               "group": _by_pattern, "channel": _by_pattern}

    def entry_scores(self, name: str, view: torch.Tensor, stats: InputStats) -> torch.Tensor:
        return wanda_scores(view, stats)

    def spec(self):
        return {"name": self.name}
