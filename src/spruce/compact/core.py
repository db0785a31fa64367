"""``spruce.compact``: every structure a mask removes becomes a smaller dense model.

The model is traced once into a dependency graph (:mod:`spruce.structure`): which channels
of which layers, norms, biases and attention heads go together. A unit of a coupled group
(one channel of a residual stream with every layer that writes or reads it, one attention
head, one FFN channel) can be removed when every layer that *reads* it has all of its
columns for that unit pruned: then its value never reaches anything, and removing it from
every member — producer rows, biases, norm entries, consumer columns, head counts — leaves
the outputs as they were. The result is a plain ``nn.Module`` at the smaller widths
(``torch.compile``, ONNX and TensorRT see ordinary layers); with ``verify=True`` its outputs
are checked against the pruned model on ``example_input``.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..backends.convert import tolerance
from ..masks import mask_module, masked_layers, set_submodule, unparametrized
from ..structure.apply import slice_model, weight_of
from ..structure.graph import OUT, build
from ..structure.groups import CoupledGroup, coupled_groups, kept_indices
from ..structure.trace import TraceError, call_args


@dataclass
class CompactionRow:
    """One coupled group and what compaction did with it."""

    group: str  # e.g. "layer1.0.conv1 channels", "encoder.layer.3.attention.self.query heads"
    kind: str  # channels | stream | heads
    units: int  # channels (or heads) in the group
    removed: int = 0
    members: list[str] = field(default_factory=list)  # "param axis role"
    reason: str | None = None  # why it was left whole
    aligned: int = 0  # removable units kept so the width stays a multiple of ``align``
    written_only: int = 0  # units pruned where written (output rows) but still read: kept

    @property
    def compacted(self) -> bool:
        return self.removed > 0


@dataclass
class CompactionReport:
    rows: list[CompactionRow] = field(default_factory=list)
    error: str | None = None  # "cannot trace: ..." — nothing was compacted
    fold_bn: bool = False
    folded: list[str] = field(default_factory=list)  # BatchNorms folded into producers
    params_before: int = 0
    params_after: int = 0
    max_rel_error: float | None = None  # at verification; None when not verified
    layers: list[str] = field(default_factory=list)  # modules whose shapes changed

    @property
    def compacted(self) -> list[CompactionRow]:
        return [r for r in self.rows if r.compacted]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["compacted"] = len(self.compacted)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompactionReport:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["rows"] = [CompactionRow(**r) for r in d.get("rows", [])]
        return cls(**known)


def default_input(model: nn.Module) -> Any:
    """A small random input guessed from the model: token ids for a Hugging Face model with
    ``config.vocab_size``, else from the first Conv2d/Linear. Pass ``example_input`` when
    the guess is wrong."""
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab:
        ids = torch.randint(0, vocab, (2, 16), device=device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return torch.randn(2, m.in_channels, 32, 32, device=device)
        if isinstance(m, nn.Linear):
            return torch.randn(2, m.in_features, device=device)
    raise ValueError("cannot guess an input for this model; pass example_input=")


def tensor_of(model: nn.Module, name: str) -> torch.Tensor:
    path, _, attr = name.rpartition(".")
    return weight_of(model.get_submodule(path) if path else model, attr)


def _dead_along(model: nn.Module, name: str, axis: int) -> np.ndarray | None:
    """Per index of ``axis``: is every entry of the masked parameter ``name`` pruned there?
    None when the parameter carries no mask."""
    path, _, attr = name.rpartition(".")
    m = mask_module(model.get_submodule(path) if path else model)
    if m is None or attr != "weight":
        return None
    mask = m.mask.detach().cpu()
    others = [d for d in range(mask.dim()) if d != axis]
    return (~mask.any(dim=others) if others else ~mask).numpy()


def removable_units(model: nn.Module, group: CoupledGroup) -> tuple[list[int], str | None]:
    """Units every reader has pruned whole, and why none can go (when that is so)."""
    readers = group.readers()
    if not readers:
        return [], "no layer reads these channels"
    dead = {}
    for key in readers:
        d = _dead_along(model, *key)
        if d is None:
            return [], f"reader '{key[0]}' carries no mask"
        dead[key] = d
    units = [u for u, pos in enumerate(group.positions)
             if all(dead[k][pos[k]].all() for k in readers)]
    return units, None


def written_only(model: nn.Module, group: CoupledGroup) -> int:
    """Units pruned where they are written (every writer's output rows: the channel
    pattern) that compaction must keep: their readers still read them, and a pruned row
    still outputs its bias (shifted by any normalisation after it)."""
    writers = [k for k in group.members if group.roles[k] == OUT]
    dead = [_dead_along(model, *k) for k in writers]
    if not writers or any(d is None for d in dead):
        return 0
    return sum(all(d[pos[k]].all() for k, d in zip(writers, dead, strict=True))
               for pos in group.positions)


def _written_only_reason(group: CoupledGroup, n: int) -> str:
    writer = next(k for k in group.members if group.roles[k] == OUT)[0].rpartition(".")[0]
    return (f"{n} of {len(group.units)} channels are pruned only where they are written "
            f"('{writer}' output rows); their readers still read them, and a pruned row "
            "still outputs its bias (and any normalisation's shift), so they stay. To "
            "compact, prune with scope='coupled' (masks the readers and biases too) or the "
            "group pattern (masks the readers' input columns)")


def compact(model: nn.Module, example_input: Any = None, verify: bool = True,
            fold_bn: bool = False, exclude: Iterable[str] = (), align: int = 1) -> nn.Module:
    """A new, smaller model: every unit of a coupled group (a channel with all its writers
    and readers, an attention head) whose readers are all pruned is removed from every
    member. The report is at ``result.spruce_compaction``; the input model is unchanged.

    ``example_input`` is what the model is traced and verified with (a tensor, a tuple of
    positional inputs or a dict of keyword inputs); without it one is guessed.
    ``fold_bn=True`` also folds each BatchNorm that directly follows a convolution into it
    (inference only: the result is put in eval mode). ``exclude`` takes module-name globs
    whose groups are left whole. ``align=8`` keeps every compacted channel count a multiple
    of 8 (some removable channels stay, their readers still see zeros): fp16/bf16 tensor-core
    GEMMs and convolutions run far slower on widths such as 227 than on 232.
    """
    if isinstance(align, bool) or not isinstance(align, int) or align < 1:
        raise ValueError(f"align must be a positive int (1: no alignment, 8: tensor cores); "
                         f"got {align!r}")
    x = default_input(model) if example_input is None else example_input
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    report = CompactionReport(fold_bn=fold_bn, params_before=_count(model))
    try:
        groups = coupled_groups(build(model, x))
    except TraceError as e:
        report.error = f"cannot trace: {e}"
        groups = []
    removed = {}
    for gi, g in enumerate(groups):
        row, units = _plan_group(model, g, exclude, align)
        report.rows.append(row)
        if units:
            removed[gi] = units
    try:
        new = _apply(model, groups, removed, report, x, verify)
    except (ValueError, RuntimeError) as e:  # a module whose head count spruce cannot fix
        heads = [gi for gi in removed if groups[gi].kind == "heads"]
        if not heads:
            raise
        first = str(e).splitlines()[0][:160]
        for gi in heads:
            removed.pop(gi)
            report.rows[gi].removed = 0
            report.rows[gi].reason = f"removing heads failed or changed the outputs ({first})"
        new = _apply(model, groups, removed, report, x, verify)
    report.folded = list(getattr(getattr(model, "spruce_compaction", None), "folded", [])) \
        + report.folded  # a second pass keeps the first one's folds on record
    report.params_after = _count(new)
    new.spruce_compaction = report
    return new


def _apply(model: nn.Module, groups: list[CoupledGroup], removed: dict[int, set[int]],
           report: CompactionReport, x: Any, verify: bool) -> nn.Module:
    """A sliced (and folded) copy of ``model``, verified on ``x``."""
    new = copy.deepcopy(model)
    sizes = {k: int(tensor_of(model, k[0]).shape[k[1]]) for g in groups for k in g.members}
    keep = kept_indices(groups, removed, sizes)
    report.layers = slice_model(new, {k: torch.as_tensor(v) for k, v in keep.items()})
    _drop_full_masks(new)
    report.folded = []
    if report.fold_bn:
        from .fold import fold_batchnorms

        report.folded = fold_batchnorms(new, x)
        new.eval()
    if verify and (removed or report.folded):
        report.max_rel_error = check_outputs(model, new, x)
    return new


def _drop_full_masks(model: nn.Module) -> None:
    """Masks that keep everything go: the layers become plain ``nn.Linear``/``nn.Conv2d``
    (no spruce code in the forward). Masks with sparsity left inside the kept channels stay,
    for ``spruce.convert``."""
    for name, layer in masked_layers(model).items():
        if bool(mask_module(layer).mask.all()):
            set_submodule(model, name, unparametrized(layer))


def _plan_group(model: nn.Module, g: CoupledGroup, exclude: list[str], align: int = 1
                ) -> tuple[CompactionRow, set[int]]:
    members = [f"{n} axis {a} {g.roles[(n, a)]}" for n, a in g.members]
    row = CompactionRow(g.name, g.kind, len(g.units), members=members, reason=g.pinned)
    modules = {n.rpartition(".")[0] for n, _ in g.members}
    hit = next((m for m in modules for glob in exclude
                if fnmatch.fnmatchcase(m, glob) or m == glob or m.startswith(glob + ".")), None)
    if row.reason is None and hit:
        row.reason = f"excluded by the caller ('{hit}')"
    if row.reason is not None:
        return row, set()
    units, why = removable_units(model, g)
    if not units and why is None:
        row.written_only = written_only(model, g)
        why = _written_only_reason(g, row.written_only) if row.written_only else None
    if len(units) == len(g.units):
        units = units[1:]  # keep one unit: shapes stay valid (its readers see zeros)
    if align > 1 and g.kind != "heads" and units:
        kept = len(g.units) - len(units)
        back = min(len(g.units), -(-kept // align) * align) - kept
        units, row.aligned = units[:len(units) - back], back
    row.removed, row.reason = len(units), why
    return row, set(units)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- verification ------------------------------------------------------------------------

def _tensors(out: Any) -> list[torch.Tensor]:
    if torch.is_tensor(out):
        return [out]
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    vals = out.values() if isinstance(out, Mapping) else out \
        if isinstance(out, (list, tuple)) else []
    return [t for v in vals for t in _tensors(v)]


def run(model: nn.Module, x: Any) -> list[torch.Tensor]:
    """The model's output tensors on ``x`` in eval mode, without gradients (modes restored)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    args, kwargs = call_args(model, x)
    try:
        with torch.no_grad():
            return _tensors(model(*args, **kwargs))
    finally:
        for m, training in modes:
            m.training = training


def relative_error(ref: torch.Tensor, out: torch.Tensor) -> float:
    if ref.shape != out.shape:
        return float("inf")
    ref, out = ref.double(), out.double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-12))


def check_outputs(model: nn.Module, new: nn.Module, x: Any) -> float:
    """Max normwise relative error of the compacted model's outputs; raises past the
    converter's ``tolerance`` (which allows for fp16/bf16 and for TF32 on CUDA)."""
    ref, out = run(model, x), run(new, x)
    errors = [0.0]
    for i, (r, o) in enumerate(zip(ref, out, strict=True)):
        if not r.is_floating_point():
            continue
        err = relative_error(r, o)
        if not err <= tolerance(r.dtype, r.device):  # also catches NaN
            raise ValueError(f"model output #{i}: outputs differ after compaction (relative "
                             f"error {err:.2e}, shapes {tuple(r.shape)} vs {tuple(o.shape)}); "
                             "leave the group alone with compact(..., exclude=[...]) and "
                             "please report this as a bug")
        errors.append(err)
    return max(errors)
