"""``spruce.compact``: drop the producer's output channels that a pruned layer never reads.

When every column a consumer ``Linear``/``Conv2d`` reads from input channel ``c`` is pruned
(for a conv: all ``kh·kw`` taps of ``c``), the value of channel ``c`` does not matter. If
the channel comes from a producer layer through per-channel ops only, and feeds nothing
else, the producer's row ``c`` (bias, BatchNorm entries) and the consumer's channel ``c``
are both removed: no gather is left and both layers shrink. Outputs stay the same; with
``verify=True`` that is checked on ``example_input`` (or a guessed random input).
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrize import type_before_parametrizations

from ..backends.convert import tolerance
from ..masks import get_mask, masked_layers, set_submodule
from .graph import Chain, Producers, TraceError, trace
from .rewrite import norm_affine, slice_layer, slice_norm, spec


@dataclass
class CompactionRow:
    """One masked layer (the consumer) and what compaction did with its input."""

    consumer: str
    kind: str  # Linear / Conv2d
    producer: str | None  # the layer whose outputs it reads, when found
    channels: int  # input features/channels of the consumer before compaction
    taps: int  # view columns per input channel (kh·kw; 1 for a Linear)
    pruned_columns: int  # all-zero columns of the consumer's mask
    prunable_channels: int  # channels whose every column is pruned (× taps = columns freed)
    dropped: int = 0  # channels removed from producer and consumer (0 when left alone)
    through: list[str] = field(default_factory=list)  # per-channel ops in between
    reason: str | None = None  # why it was left alone

    @property
    def compacted(self) -> bool:
        return self.dropped > 0


@dataclass
class CompactionReport:
    rows: list[CompactionRow] = field(default_factory=list)
    error: str | None = None  # "cannot trace: ..." — nothing was compacted
    fold_bn: bool = False
    folded: list[str] = field(default_factory=list)  # BatchNorms folded into producers
    params_before: int = 0
    params_after: int = 0
    max_rel_error: float | None = None  # at verification; None when not verified
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)  # new shapes by name

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


def _view_stats(layer: nn.Module) -> tuple[int, int, torch.Tensor]:
    """(channels, taps, prunable channel flags) from the layer's mask view."""
    mask = get_mask(layer).detach().cpu()  # (R, K)
    channels = layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features
    dead = ~mask.any(0)  # (K,) all-pruned columns
    return channels, mask.shape[1] // channels, dead.reshape(channels, -1).all(1)


def _row(name: str, layer: nn.Module, chain: Chain) -> tuple[CompactionRow, torch.Tensor]:
    channels, taps, prunable = _view_stats(layer)
    mask = get_mask(layer)
    kind = type_before_parametrizations(layer).__name__
    row = CompactionRow(name, kind, chain.producer, channels, taps, int((~mask.any(0)).sum()),
                        int(prunable.sum()), through=chain.through, reason=chain.reason)
    if row.reason is None and not row.prunable_channels:
        row.reason = f"no input channel has all its {taps} column(s) pruned " \
                     f"({row.pruned_columns} of {channels * taps} columns pruned)"
    keep = (~prunable).nonzero().flatten()
    if row.reason is None and keep.numel() == 0:
        keep = torch.zeros(1, dtype=torch.long)  # keep one channel: shapes stay valid
    row.dropped = 0 if row.reason else channels - keep.numel()
    return row, keep


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


def compact(model: nn.Module, example_input: Any = None, verify: bool = True,
            fold_bn: bool = False, exclude: Iterable[str] = ()) -> nn.Module:
    """A new model in which each masked layer's fully pruned input channels are removed
    from it and from the layer producing them. The report is at ``result.spruce_compaction``.

    ``example_input`` is what the model is traced and verified with (a tensor, a tuple of
    positional inputs or a dict of keyword inputs); without it one is guessed.
    ``fold_bn=True`` also folds the BatchNorm directly after each compacted producer into
    it, with its running statistics: the result is for inference and is put in eval mode.
    ``exclude`` takes consumer-name globs to leave alone. The input model is not changed.
    """
    x = default_input(model) if example_input is None else example_input
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    new = copy.deepcopy(model)
    report = CompactionReport(fold_bn=fold_bn, params_before=_count(model))
    try:
        plan = _plan(model, Producers(model, trace(model, x)), report, fold_bn, exclude)
    except TraceError as e:
        report.error = f"cannot trace: {e}"
    else:
        plan.apply(new, report)
        if report.folded:
            new.eval()
        if verify and report.compacted:
            report.max_rel_error = check_outputs(model, new, x, plan)
    report.folded = getattr(getattr(model, "spruce_compaction", None), "folded", []) + \
        report.folded  # a second pass keeps the first one's folds on record
    report.params_after = _count(new)
    new.spruce_compaction = report
    return new


def _plan(model: nn.Module, producers: Producers, report: CompactionReport, fold_bn: bool,
          exclude: list[str]) -> _Plan:
    """One report row per masked layer; the plan of what every touched module keeps."""
    plan = _Plan()
    for name, layer in masked_layers(model).items():
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            continue
        excluded = any(fnmatch.fnmatchcase(name, g) for g in exclude)
        chain = Chain(reason="excluded by the caller") if excluded else producers.chain(name)
        row, keep = _row(name, layer, chain)
        report.rows.append(row)
        if row.compacted:
            plan.add(name, chain, keep, fold_bn)
    return plan


class _Plan:
    """Which rows/channels every touched module keeps; applied once per module."""

    def __init__(self) -> None:
        self.keep_in: dict[str, torch.Tensor] = {}
        self.keep_out: dict[str, torch.Tensor] = {}
        self.norms: dict[str, torch.Tensor] = {}
        self.folds: dict[str, str] = {}  # producer → BatchNorm folded into it
        self.pairs: dict[str, str] = {}  # consumer → producer

    def add(self, consumer: str, chain: Chain, keep: torch.Tensor, fold: bool) -> None:
        self.keep_in[consumer] = self.keep_out[chain.producer] = keep
        self.pairs[consumer] = chain.producer
        for norm in chain.norms:
            self.norms[norm] = keep
        if fold and chain.norm_first:
            self.folds[chain.producer] = chain.norms[0]

    def apply(self, new: nn.Module, report: CompactionReport) -> None:
        self.folds = {p: n for p, n in self.folds.items()  # only norms with running stats
                      if new.get_submodule(n).running_mean is not None}
        for name in dict.fromkeys([*self.keep_out, *self.keep_in]):
            keep_out = self.keep_out.get(name)
            norm = self.folds.get(name)
            affine = None if norm is None else [t.index_select(0, keep_out.to(t.device))
                                                for t in norm_affine(new.get_submodule(norm))]
            set_submodule(new, name, slice_layer(new.get_submodule(name), keep_out,
                                                 self.keep_in.get(name), affine))
        for name, keep in self.norms.items():
            folded = name in self.folds.values()
            set_submodule(new, name, nn.Identity() if folded
                          else slice_norm(new.get_submodule(name), keep))
        report.folded = list(self.folds.values())
        report.layers = {n: spec(new.get_submodule(n)) for n in
                         [*self.keep_out, *self.keep_in, *self.norms]}


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- verification ------------------------------------------------------------------------

def _tensors(out: Any) -> list[torch.Tensor]:
    if torch.is_tensor(out):
        return [out]
    vals = out.values() if isinstance(out, Mapping) else out \
        if isinstance(out, (list, tuple)) else []
    return [t for v in vals for t in _tensors(v)]


def _run(model: nn.Module, x: Any, names: list[str]) -> tuple[dict[str, torch.Tensor], list]:
    seen: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda _m, _a, out, n=n: seen.setdefault(n, out.detach())) for n in names]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            out = model(**x) if isinstance(x, dict) else model(*x) \
                if isinstance(x, (tuple, list)) else model(x)
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes:
            m.training = training
    return seen, _tensors(out)


def _close(ref: torch.Tensor, out: torch.Tensor, what: str, consumer: str | None) -> float:
    """Normwise relative error of ``out``; raises past the converter's ``tolerance`` (which
    allows for fp16/bf16 and for TF32 on CUDA)."""
    tol = tolerance(ref.dtype, ref.device)
    if ref.shape != out.shape:
        err = float("inf")
    else:
        ref, out = ref.double(), out.double()
        err = float((out - ref).norm() / ref.norm().clamp_min(1e-12))
    if not err <= tol:  # also catches NaN
        fix = f"compact(..., exclude=['{consumer}'])" if consumer else "verify=False at own risk"
        raise ValueError(f"{what}: outputs differ after compaction (relative error {err:.2e}, "
                         f"shapes {tuple(ref.shape)} vs {tuple(out.shape)}); leave it alone "
                         f"with {fix}, and please report this as a bug")
    return err


def check_outputs(model: nn.Module, new: nn.Module, x: Any, plan: _Plan) -> float:
    """Max relative error of each compacted consumer's output and of the model's output."""
    names = [n for n in plan.pairs if n not in plan.folds]  # folded layers' outputs change
    ref_layers, ref = _run(model, x, names)
    new_layers, out = _run(new, x, names)
    errors = [0.0]
    for name in names:
        r = ref_layers[name]
        if name in plan.keep_out:  # the consumer is a compacted producer too
            axis = 1 if isinstance(model.get_submodule(name), nn.Conv2d) else -1
            r = r.index_select(axis, plan.keep_out[name].to(r.device))
        errors.append(_close(r, new_layers[name], f"compacting '{plan.pairs[name]}' → "
                                                   f"'{name}'", name))
    for i, (r, o) in enumerate(zip(ref, out, strict=True)):
        if r.is_floating_point():
            errors.append(_close(r, o, f"model output #{i}", None))
    return max(errors)
