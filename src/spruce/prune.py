"""``spruce.prune``: criteria → patterns → allocation → masks on the layers.

Everything is computed and checked before the first mask is attached, so an error leaves
the model untouched.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .allocation import allocate, check_scope, override_for
from .criteria import Criterion, Taylor, get_criterion
from .masks import attach, get_mask
from .patterns import Pattern, get_pattern
from .patterns.base import check_density
from .view import Skipped, layer_view, module_types, prunable_layers, taps, view_shape


@dataclass(frozen=True)
class LayerRow:
    """One pruned layer in a report."""

    name: str
    kind: str  # "Linear" or "Conv2d"
    view: tuple[int, int]  # (R, K) of the 2-D view
    pattern: str
    target: float | None  # density asked for this layer (None under global scopes)
    density: float  # fraction of the layer's weights kept, after this call
    kept: int
    total: int


@dataclass
class PruneReport:
    rows: list[LayerRow]
    skipped: list[Skipped]
    pattern: dict[str, Any]
    criterion: dict[str, Any]
    scope: str
    density: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kept(self) -> int:
        return sum(r.kept for r in self.rows)

    @property
    def total(self) -> int:
        return sum(r.total for r in self.rows)

    @property
    def overall_density(self) -> float:
        return self.kept / max(1, self.total)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [asdict(r) for r in self.rows],
                "skipped": [asdict(s) for s in self.skipped],
                "pattern": self.pattern, "criterion": self.criterion, "scope": self.scope,
                "density": self.density, "kept": self.kept, "total": self.total}


def pattern_label(p: Pattern) -> str:
    spec = p.spec()
    if spec["name"] == "vector":
        return f"{spec['n']}:{spec['m']}"
    if spec["name"] == "block":
        return f"block {spec['block'][0]}x{spec['block'][1]}"
    if spec.get("unit", "column") != "column":
        return f"{spec['name']} ({spec['unit']})"
    return spec["name"]


def _check_weights(layers: dict[str, nn.Module]) -> None:
    for name, layer in layers.items():
        w = layer_view(layer)
        if not torch.isfinite(w).all():
            bad = int((~torch.isfinite(w)).sum())
            raise ValueError(f"layer '{name}': weight has {bad} NaN/inf entries; fix or "
                             f"reinitialise the weights, or exclude=['{name}']")


def prune(model: nn.Module, pattern: str | dict | Pattern = "element",
          density: float | None = None, criterion: str | dict | Criterion = "magnitude",
          scope: str = "uniform", exclude: Iterable[str] = (),
          overrides: dict[str, float] | None = None,
          calibration: Iterable | None = None, example_input: Any = None,
          coupled: dict[str, bool] | None = None, **pattern_kwargs: Any) -> PruneReport:
    """Prune ``model`` in place with masks; returns a per-layer report.

    ``density`` is the fraction of weights kept (N:M patterns fix it to N/M).
    ``pattern_kwargs`` go to the pattern (``n, m`` for N:M, ``block=(bo, bk)``,
    ``reduce`` for the group score). ``calibration`` feeds the Taylor criterion.

    ``scope="coupled"`` (with ``pattern="channel"``) prunes structures instead of layers:
    the model is traced on ``example_input`` into a dependency graph, and every coupled
    group — a channel with all the layers that write and read it, a residual stream, an
    attention head — keeps ``density`` of its units, masked in every member, so that
    :func:`spruce.compact` turns the result into a smaller dense model with the same
    outputs. ``coupled={"stream": False, "heads": False, "channels": False}`` leaves
    those kinds of group whole. Each group is in ``report.extra["groups"]``.
    """
    if scope == "coupled":
        return _prune_coupled(model, pattern, density, criterion, exclude, example_input,
                              coupled)
    pat = get_pattern(pattern, **pattern_kwargs)
    crit = get_criterion(criterion)
    if calibration is not None and isinstance(crit, Taylor) and crit.data is None:
        crit = Taylor(data=calibration, loss_fn=crit.loss_fn)
    check_scope(scope)
    overrides = dict(overrides or {})
    if density is None and pat.fixed_density() is None:
        raise ValueError(f"pattern '{pat.name}' needs a density in (0, 1] (fraction kept)")
    if density is not None:
        density = check_density(density)
    for glob, d in overrides.items():
        if not isinstance(d, (int, float)):
            raise ValueError(f"override {glob!r}: density must be a number; got {d!r}")
        try:
            check_density(d)
        except ValueError as e:
            raise ValueError(f"override {glob!r}: {e}") from None

    layers, skipped = prunable_layers(model, tuple(exclude))
    if not layers:
        raise ValueError("no prunable layers (nn.Linear / nn.Conv2d with groups=1) in the "
                         f"model; module types found: {', '.join(module_types(model))}")
    _check_weights(layers)
    patterns = {name: pat.for_view(taps(layer)) for name, layer in layers.items()}
    for name in layers:
        try:
            patterns[name].check_shape(view_shape(layers[name]))
        except ValueError as e:
            raise ValueError(f"layer '{name}': {e}") from None

    scores = crit.scores(model, layers)
    existing = {name: _cpu(get_mask(layer)) for name, layer in layers.items()}
    try:
        masks = allocate(patterns, {n: s.detach().cpu() for n, s in scores.items()},
                         existing, density, scope, overrides)
    except ValueError as e:
        raise ValueError(f"pruning with {pattern_label(pat)}: {e}") from None

    info = {"patterns": [pat.spec()], "criterion": crit.spec(), "scope": scope}
    rows = []
    for name, layer in layers.items():
        target = _target(name, pat, density, scope, overrides)
        attach(layer, masks[name], {**info, "target": target})
        kept = int(masks[name].sum())
        rows.append(LayerRow(name, type(layer).__name__, view_shape(layer), pattern_label(pat),
                             target, kept / masks[name].numel(), kept, masks[name].numel()))
    return PruneReport(rows, skipped, pat.spec(), crit.spec(), scope, density)


def _prune_coupled(model: nn.Module, pattern: Any, density: float | None, criterion: Any,
                   exclude: Iterable[str], example_input: Any, coupled: Any) -> PruneReport:
    from .compact.core import default_input
    from .structure.prune import SPEC, prune_coupled

    if pattern not in ("channel", "structured"):
        raise ValueError(f"scope='coupled' removes whole channels and heads: use "
                         f"pattern='channel' (got {pattern!r})")
    if density is None:
        raise ValueError("scope='coupled' needs a density in (0, 1] (fraction of units kept)")
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    x = default_input(model) if example_input is None else example_input
    crit = get_criterion(criterion)
    masks, groups = prune_coupled(model, density, crit, x, exclude, coupled)
    rows = []
    for name, mask in masks.items():
        layer = model.get_submodule(name)
        kept = int(mask.sum())
        rows.append(LayerRow(name, type(layer).__bases__[0].__name__, view_shape(layer),
                             "structured", None, kept / mask.numel(), kept, mask.numel()))
    _, skipped = prunable_layers(model, tuple(exclude))
    return PruneReport(rows, skipped, dict(SPEC), crit.spec(), "coupled", density,
                       extra={"groups": groups})


def _cpu(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().cpu()


def _target(name: str, pat: Pattern, density: float | None, scope: str,
            overrides: dict[str, float]) -> float | None:
    fixed = pat.fixed_density()
    if fixed is not None:
        return fixed
    o = override_for(name, overrides)
    if o is not None:
        return o
    return density if scope == "uniform" else None


def density_of(model: nn.Module) -> float:
    """Fraction of the prunable weights kept across the model (1.0 if nothing is masked)."""
    layers, _ = prunable_layers(model)
    kept = total = 0
    for layer in layers.values():
        m = get_mask(layer)
        n = math.prod(view_shape(layer))
        total += n
        kept += n if m is None else int(m.sum())
    return kept / max(1, total)
