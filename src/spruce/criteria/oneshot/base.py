"""One-shot criteria: masks chosen layer by layer from calibration inputs.

A one-shot criterion does not hand scores to the allocator: it needs each layer's inputs
*as the pruned model computes them*, so it prunes in forward order
(:func:`spruce.calibrate.sequential`) and returns exact masks — the pattern's own kept
count, its own structure. Each criterion holds one solver per pattern name (a registry,
``solvers``); a solver gets the layer's weight view, its input statistics, the pattern
and the density, and returns the mask and, when it changes the kept weights, the new ones.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from ...calibrate import InputStats, batches_of, collect, model_device, sequential, \
    stages_of, SequentialResult
from ...errors import SpruceError
from ...masks import get_mask
from ...patterns import Pattern
from ...view import layer_view
from ..base import Criterion
from .hessian import dense_target

# (name, weight view fp32 [R, K], input stats, pattern, density, alive [R, K] | None,
#  criterion) -> (mask [R, K] bool, new weight view or None)
Solver = Callable[[str, torch.Tensor, InputStats, Pattern, float | None,
                   torch.Tensor | None, "OneShot"], tuple[torch.Tensor, torch.Tensor | None]]


def round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


class OneShot(Criterion):
    """``calibration``: batches the model takes (tensors, tuples or dicts); ``damp``:
    diagonal damping of the input Hessian as a fraction of its mean diagonal; ``blocksize``:
    columns updated together by the SparseGPT sweep (a multiple of M or of the block width
    is used)."""

    solvers: ClassVar[dict[str, Solver]] = {}
    needs_gram: ClassVar[bool] = False  # the full K×K Gram matrix, not only its diagonal
    changes_weights: ClassVar[bool] = False

    def __init__(self, calibration: Iterable | None = None, damp: float = 0.01,
                 blocksize: int = 128):
        if not (isinstance(damp, (int, float)) and math.isfinite(damp) and damp >= 0):
            raise SpruceError(f"damp must be a number >= 0 (a fraction of the mean Hessian "
                              f"diagonal, default 0.01); got {damp!r}", field="damp")
        if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
            raise SpruceError(f"blocksize must be a positive integer (default 128); got "
                              f"{blocksize!r}", field="blocksize")
        self.calibration = calibration
        self.damp = float(damp)
        self.blocksize = blocksize

    def with_calibration(self, calibration: Iterable | None) -> OneShot:
        if calibration is None or self.calibration is not None:
            return self
        out = copy.copy(self)
        out.calibration = calibration
        return out

    def check_patterns(self, patterns: dict[str, Pattern], scope: str) -> None:
        if scope != "uniform":
            raise SpruceError(f"criterion '{self.name}' prunes layer by layer in forward "
                              f"order and takes scope='uniform' (with overrides for chosen "
                              f"layers); got scope={scope!r}", field="scope")
        for p in patterns.values():
            if p.name not in self.solvers:
                raise SpruceError(f"criterion '{self.name}' has no solver for pattern "
                                  f"'{p.name}'; valid: {', '.join(sorted(self.solvers))}",
                                  field="pattern")

    def prune_layers(self, model: nn.Module, layers: dict[str, nn.Module],
                     patterns: dict[str, Pattern], targets: dict[str, float | None],
                     keep_weights: bool | None = None) -> SequentialResult:
        """Masks (2-D views, exact per pattern) for every layer, chosen in forward order;
        the kept weights are the solver's when the criterion changes weights (unless
        ``keep_weights=False``: then every weight is restored and only masks come back)."""
        def solve(name, layer, view, stats):
            view = dense_target(view, stats, self.damp, name)
            alive = get_mask(layer)
            alive = None if alive is None else alive.to(view.device)
            return self.solvers[patterns[name].name](
                name, view, stats, patterns[name], targets[name], alive, self)
        return sequential(model, layers, self.calibration, solve, self.name,
                          self.needs_gram, keep_weights=self.changes_weights
                          if keep_weights is None else keep_weights,
                          dense_targets=getattr(self, "targets", "pruned") == "dense")

    # -- scores on the dense model (for scope="coupled") -------------------------------
    def entry_scores(self, name: str, view: torch.Tensor, stats: InputStats) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
        """Entry scores from the *dense* model's inputs (one pass per stage, no layer
        changed): what coupled structure selection ranks units with."""
        batches = batches_of(self.calibration, self.name)
        device = model_device(model)
        stages, calls = stages_of(model, layers, batches[0], device)
        out = {}
        for stage in stages:
            stats = collect(model, layers, stage, batches, calls, device, self.needs_gram)
            for name in stage:
                view = layer_view(layers[name]).detach().float()
                out[name] = self.entry_scores(name, view, stats[name]).cpu()
        return out

    def finish(self, model: nn.Module, layers: dict[str, nn.Module]) -> list[str]:
        """After masks chosen elsewhere (coupled scope) are attached: criteria that change
        kept weights reconstruct them here. Returns the layers changed."""
        return []

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "damp": self.damp, "blocksize": self.blocksize}


def rowwise_keep(scores: torch.Tensor, total: int, alive: torch.Tensor | None) -> torch.Tensor:
    """Keep ``total`` entries, the best of each row: every row keeps ``total // R`` and the
    first ``total % R`` rows one more (ties to the lower index)."""
    r, k = scores.shape
    s = scores.double()
    if alive is not None:
        s = s.masked_fill(~alive, -math.inf)
    counts = torch.full((r,), total // r, device=s.device)
    counts[: total % r] += 1
    order = torch.argsort(-s, dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(k, device=s.device)
                                            .expand(r, k).contiguous())
    keep = rank < counts[:, None]
    return keep if alive is None else keep & alive
