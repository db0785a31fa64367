"""``spruce.prune``: criteria → patterns → allocation → masks on the layers.

Everything is computed and checked before the first mask is attached, so an error leaves
the model untouched. Which modules are pruned, which stay dense and why, and how tied
weights are handled is :func:`spruce.view.find_layers`'s to decide: every module holding
weights is in the report's ``rows`` or its ``skipped``. A weight shared by several layers of
one kind is pruned once (one row, its other users in ``LayerRow.shared``) and every user
reads the same masked tensor; a weight tied to an embedding stays dense, with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .allocation import allocate, check_scope, override_for
from .criteria import Criterion, OneShot, Taylor, get_criterion
from torch.nn.utils import parametrize

from .errors import SpruceError
from .masks import WeightMask, attach, get_mask
from .patterns import Pattern, get_pattern
from .patterns.base import check_density
from .view import (
    Skipped,
    find_layers,
    globs_of,
    layer_view,
    matches,
    module_types,
    prunable_layers,
    taps,
    type_name,
    view_shape,
)


@dataclass(frozen=True)
class LayerRow:
    """One pruned layer in a report."""

    name: str
    kind: str  # the layer's type: "Linear", "Conv2d", "Conv1d", "Conv1D", ...
    view: tuple[int, int]  # (R, K) of the 2-D view
    pattern: str
    target: float | None  # density asked for this layer (None under global scopes)
    density: float  # fraction of the layer's weights kept, after this call
    kept: int
    total: int
    shared: tuple[str, ...] = ()  # other names reading this weight (tied layers, aliases)


@dataclass
class PruneReport:
    rows: list[LayerRow]
    skipped: list[Skipped]
    pattern: dict[str, Any]
    criterion: dict[str, Any]
    scope: str
    density: float | None
    extra: dict[str, Any] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)  # layers whose kept weights were refit

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
                "density": self.density, "kept": self.kept, "total": self.total,
                "weights_changed": list(self.changed)}


def pattern_label(p: Pattern) -> str:
    spec = p.spec()
    if spec["name"] == "vector":
        return f"{spec['n']}:{spec['m']}"
    if spec["name"] == "block":
        return f"block {spec['block'][0]}x{spec['block'][1]}"
    if spec.get("unit", "column") != "column":
        return f"{spec['name']} ({spec['unit']})"
    return spec["name"]


def _foreign_weight(layer: nn.Module) -> str | None:
    """What besides spruce computes ``layer.weight`` (torch.nn.utils.prune, weight_norm,
    spectral_norm, other parametrizations), or None."""
    if parametrize.is_parametrized(layer, "weight"):
        others = [type(p).__name__ for p in layer.parametrizations.weight
                  if not isinstance(p, WeightMask)]
        return f"the parametrization(s) {', '.join(others)}" if others else None
    if not isinstance(layer._parameters.get("weight"), nn.Parameter):
        hooks = [type(h).__name__ for h in layer._forward_pre_hooks.values()]
        return f"a forward pre-hook ({', '.join(hooks) or 'unknown'})"
    return None


def _check_layers(layers: dict[str, nn.Module]) -> None:
    """Every layer can take a mask: checked before the first mask is attached."""
    for name, layer in layers.items():
        foreign = _foreign_weight(layer)
        if foreign:
            raise SpruceError(f"weight is computed by {foreign} (torch.nn.utils.prune, "
                              "weight_norm or spectral_norm?); remove that first "
                              "(torch.nn.utils.prune.remove(m, 'weight'), torch.nn.utils."
                              "parametrize.remove_parametrizations(m, 'weight')) or "
                              f"exclude=['{name}']", layer=name)
        if layer.weight.is_meta:
            raise SpruceError("weight is on the meta device and has no values to score; "
                              "materialise the model first (model.to_empty(device='cpu') and "
                              f"load its weights) or exclude=['{name}']", layer=name)
        w = layer_view(layer)
        if not torch.isfinite(w).all():
            bad = int((~torch.isfinite(w)).sum())
            raise SpruceError(f"weight has {bad} NaN/inf entries; fix or reinitialise the "
                              f"weights, or exclude=['{name}']", layer=name)


def _check_overrides(overrides: dict[str, float], names: list[str]) -> None:
    for glob, d in overrides.items():
        if not isinstance(d, (int, float)):
            raise SpruceError(f"override {glob!r}: density must be a number; got {d!r}",
                              field="overrides")
        try:
            check_density(d)
        except ValueError as e:
            raise SpruceError(f"override {glob!r}: {e}", field="overrides") from None
        if not any(matches(n, (glob,)) for n in names):
            raise SpruceError(f"override {glob!r} matches no prunable layer; prunable layers "
                              f"are {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}",
                              field="overrides")


def prune(model: nn.Module, pattern: str | dict | Pattern = "element",
          density: float | None = None, criterion: str | dict | Criterion = "magnitude",
          scope: str = "uniform", exclude: str | Iterable[str] = (),
          overrides: dict[str, float] | None = None,
          calibration: Iterable | None = None, example_input: Any = None,
          coupled: dict[str, bool] | None = None, **pattern_kwargs: Any) -> PruneReport:
    """Prune ``model`` in place with masks; returns a per-layer report.

    ``density`` is the fraction of weights kept (N:M patterns fix it to N/M).
    ``pattern_kwargs`` go to the pattern (``n, m`` for N:M, ``block=(bo, bk)``,
    ``reduce`` for the group score). ``calibration`` (batches the model takes, like
    ``example_input``) feeds the Taylor criterion and the one-shot ones, ``"wanda"`` and
    ``"sparsegpt"``, which prune layer by layer in forward order on inputs through the
    layers pruned before (SparseGPT also refits the kept weights: ``report.changed``).
    ``exclude``: one module-name glob or a list of them. ``overrides``: glob → density; a
    glob that matches no prunable layer is an error.

    Tied weights: a parameter shared by layers of one kind and shape gets one mask that
    every user reads (one row, the others in ``LayerRow.shared``); a layer whose weight is
    tied to an embedding (GPT-2's and Llama's LM heads) stays dense and is listed in
    ``skipped`` — masking the head alone would leave the embedding reading the unmasked
    weight. Untie it (``head.weight = nn.Parameter(head.weight.clone())``) to prune it.

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
                              coupled, calibration)
    pat = get_pattern(pattern, **pattern_kwargs)
    crit = get_criterion(criterion)
    if calibration is not None and isinstance(crit, Taylor) and crit.data is None:
        crit = Taylor(data=calibration, loss_fn=crit.loss_fn)
    if isinstance(crit, OneShot):
        crit = crit.with_calibration(calibration)
    check_scope(scope)
    overrides = dict(overrides or {})
    if density is None and pat.fixed_density() is None:
        raise ValueError(f"pattern '{pat.name}' needs a density in (0, 1] (fraction kept)")
    if density is not None:
        density = check_density(density)
    found = find_layers(model, globs_of(exclude))
    layers = found.layers
    if not layers:
        raise SpruceError("no prunable layers (nn.Linear, nn.Conv1d/2d/3d with groups=1, "
                          "transformers' Conv1D) in the model; module types found: "
                          f"{', '.join(module_types(model))}")
    _check_overrides(overrides, [n for name in layers for n in (name, *found.shared[name])])
    _check_layers(layers)
    patterns = {name: pat.for_view(taps(layer)) for name, layer in layers.items()}
    for name in layers:
        try:
            patterns[name].check_shape(view_shape(layers[name]))
        except ValueError as e:
            raise SpruceError(str(e), layer=name) from None

    changed: list[str] = []
    if isinstance(crit, OneShot):  # masks chosen layer by layer, in forward order
        crit.check_patterns(patterns, scope)
        done = crit.prune_layers(model, layers, patterns, {
            n: _target(n, pat, density, scope, overrides) for n in layers})
        masks, changed = done.masks, done.changed
    else:
        masks = _allocated(model, layers, crit, patterns, density, scope, overrides, pat)

    info = {"patterns": [pat.spec()], "criterion": crit.spec(), "scope": scope}
    rows = []
    for name, layer in layers.items():
        target = _target(name, pat, density, scope, overrides)
        extra = {"weights_changed": True} if name in changed else {}
        attach(layer, masks[name], {**info, "target": target, **extra}, found.followers[name])
        kept = int(masks[name].sum())
        rows.append(LayerRow(name, type_name(layer), view_shape(layer), pattern_label(pat),
                             target, kept / masks[name].numel(), kept, masks[name].numel(),
                             found.shared[name]))
    return PruneReport(rows, found.skipped, pat.spec(), crit.spec(), scope, density,
                       changed=changed)


def _allocated(model: nn.Module, layers: dict[str, nn.Module], crit: Criterion,
               patterns: dict[str, Pattern], density: float | None, scope: str,
               overrides: dict[str, float], pat: Pattern) -> dict[str, torch.Tensor]:
    """Scores of every layer → masks by the scope's allocation."""
    scores = crit.scores(model, layers)
    existing = {name: _cpu(get_mask(layer)) for name, layer in layers.items()}
    try:
        return allocate(patterns, {n: s.detach().cpu() for n, s in scores.items()},
                        existing, density, scope, overrides)
    except ValueError as e:
        raise ValueError(f"pruning with {pattern_label(pat)}: {e}") from None


def _prune_coupled(model: nn.Module, pattern: Any, density: float | None, criterion: Any,
                   exclude: Iterable[str], example_input: Any, coupled: Any,
                   calibration: Iterable | None = None) -> PruneReport:
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
    if isinstance(crit, OneShot):  # ranks units on the dense inputs, refits after masking
        crit = crit.with_calibration(calibration)
    masks, groups = prune_coupled(model, density, crit, x, exclude, coupled)
    changed = crit.finish(model, {p: model.get_submodule(p) for p in masks}) \
        if isinstance(crit, OneShot) else []
    rows = []
    for name, mask in masks.items():
        layer = model.get_submodule(name)
        kept = int(mask.sum())
        rows.append(LayerRow(name, type_name(layer), view_shape(layer),
                             "structured", None, kept / mask.numel(), kept, mask.numel()))
    _, skipped = prunable_layers(model, tuple(exclude))
    return PruneReport(rows, skipped, dict(SPEC), crit.spec(), "coupled", density,
                       extra={"groups": groups}, changed=changed)


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
