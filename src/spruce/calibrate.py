"""Sequential calibration: each layer's inputs, seen through the layers pruned before it.

One-shot criteria (Wanda, SparseGPT) and the least-squares reconstruction need, for every
prunable layer, statistics of the inputs it really sees in the pruned model: the per-column
sum of squares (Wanda's ‖X_j‖²) or the full Gram matrix ``H = Σ x xᵀ`` (``[K, K]`` fp32,
SparseGPT's Hessian up to a factor). The model is run on the calibration batches in
*stages*: a stage is a run of layers called one after the other on the very same input
tensor (Q, K and V of an attention block share one stage and one ``H``). For each stage in
forward order, a forward hook accumulates the statistics over every calibration batch and
the forward stops right after the stage's last call; then the stage's layers are solved and
their results written into the weights, so the next stage's inputs come through the pruned
layers before it. Peak memory is one stage's statistics (one ``K×K`` matrix) plus one
batch's forward; the cost is about half a forward per stage and batch.

A batch is what the model takes, like ``example_input``: a tensor (``model(x)``), a tuple
(``model(*x)``) or a dict (``model(**x)``); it is moved to the model's device.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_map

from .errors import SpruceError
from .masks import mask_module, original_weight, set_submodule, unparametrized
from .view import layer_view, type_name, unview


@dataclass
class InputStats:
    """Statistics of the rows ``X [N, K]`` (view column order) one or more layers read."""

    sumsq: torch.Tensor  # [K] fp32: Σ_n x_nj² (Wanda's ‖X_j‖₂²)
    gram: torch.Tensor | None  # [K, K] fp32: Σ_n x_n x_nᵀ (None when only norms are needed)
    rows: int = 0  # N, calibration rows seen (tokens, or output positions of a conv)
    cross: torch.Tensor | None = None  # [K, K] fp32: Σ_n x_n^dense x_nᵀ (targets="dense")

    def add(self, x: torch.Tensor, dense: torch.Tensor | None = None) -> None:
        x = x.float()
        self.sumsq += x.square().sum(0)
        if self.gram is not None:
            self.gram.addmm_(x.T, x)
        if dense is not None:
            if self.cross is None:
                self.cross = torch.zeros_like(self.gram)
            self.cross.addmm_(dense.float().T, x)
        self.rows += x.shape[0]


class _Stop(Exception):
    """Raised by a hook once the stage's last layer has run: the rest is not needed."""


# ------------------------------------------------------------------ inputs as view rows

def _rows_linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _rows_conv(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """im2col rows in the view's ``(c, kh, kw)`` column order."""
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise SpruceError(f"one-shot calibration reads convolution inputs with zero padding "
                          f"given as numbers; this layer has padding={layer.padding!r}, "
                          f"padding_mode={layer.padding_mode!r}; exclude it")
    if isinstance(layer, nn.Conv1d):
        x, k, s, p, d = (x.unsqueeze(-2), (1, *layer.kernel_size), (1, *layer.stride),
                         (0, *layer.padding), (1, *layer.dilation))
    else:
        k, s, p, d = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    cols = F.unfold(x, k, dilation=d, padding=p, stride=s)  # (B, C·kh·kw, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


ROWS: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    "Linear": _rows_linear, "Conv1D": _rows_linear, "Conv1d": _rows_conv, "Conv2d": _rows_conv,
}


def input_rows(name: str, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input ``x`` of ``layer`` as rows ``[N, K]`` of its 2-D view's columns."""
    kind = type_name(layer)
    for cls in type(layer).__mro__:
        if cls.__name__ in ROWS:
            kind = cls.__name__
            break
    if kind not in ROWS:
        raise SpruceError(f"one-shot criteria read the inputs of {', '.join(ROWS)} layers; "
                          f"this one is a {type_name(layer)}; exclude it", layer=name)
    rows = ROWS[kind](layer, x)
    if not torch.isfinite(rows).all():
        bad = int((~torch.isfinite(rows)).sum())
        raise SpruceError(f"{bad} calibration activation(s) entering the layer are NaN/inf; "
                          "check the calibration inputs and the layers before this one "
                          "(a dense forward on the same batch shows where they start), "
                          f"or exclude=['{name}']", layer=name)
    return rows


# ------------------------------------------------------------------ batches

def model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return torch.device("cpu") if p is None else p.device


def batches_of(calibration: Iterable | None, criterion: str) -> list[Any]:
    """The calibration batches as a list (they are replayed once per stage)."""
    if calibration is None:
        raise SpruceError(f"criterion '{criterion}' needs calibration data: pass "
                          "prune(..., calibration=[batch, ...]) with batches the model takes "
                          "(tensors, tuples of positional inputs or dicts of keyword inputs, "
                          "like example_input)", field="calibration")
    if isinstance(calibration, (torch.Tensor, dict)):
        raise SpruceError(f"calibration must be an iterable of batches; got one "
                          f"{type(calibration).__name__} (wrap it: calibration=[x])",
                          field="calibration")
    batches = list(calibration)
    if not batches:
        raise SpruceError(f"criterion '{criterion}': the calibration data yielded no batch; "
                          "pass at least one batch the model takes", field="calibration")
    return batches


def _call_until_stop(model: nn.Module, batch: Any, device: torch.device, index: int) -> None:
    """``call``, ended early (and quietly) by a hook that has captured what it needed."""
    try:
        call(model, batch, device, index)
    except _Stop:
        pass


def call(model: nn.Module, batch: Any, device: torch.device, index: int) -> None:
    batch = tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, batch)
    try:
        if isinstance(batch, dict):
            model(**batch)
        elif isinstance(batch, (tuple, list)):
            model(*batch)
        else:
            model(batch)
    except (_Stop, SpruceError):
        raise
    except Exception as e:  # noqa: BLE001 - any failure of the user's model on a batch
        shape = tree_map(lambda t: tuple(t.shape) if isinstance(t, torch.Tensor) else t, batch)
        raise SpruceError(f"the model fails on calibration batch {index} (shapes {shape}): "
                          f"{type(e).__name__}: {e}; calibration batches must be inputs the "
                          "model takes, like example_input", field="calibration") from None


# ------------------------------------------------------------------ stages

def stages_of(model: nn.Module, layers: dict[str, nn.Module], batch: Any,
              device: torch.device) -> tuple[list[list[str]], dict[str, int]]:
    """Layers grouped into stages in forward order (one forward of ``batch``), and how
    many times each layer is called per forward."""
    order: list[str] = []
    calls = dict.fromkeys(layers, 0)
    stage_of: dict[str, int] = {}
    last: list[Any] = [None]

    def hook(name):
        def fn(module, args):
            x = args[0] if args else None
            calls[name] += 1
            if name not in stage_of:
                same = order and x is last[0]
                stage_of[name] = stage_of[order[-1]] if same else len(set(stage_of.values()))
                order.append(name)
            last[0] = x
        return fn

    handles = [layer.register_forward_pre_hook(hook(n)) for n, layer in layers.items()]
    try:
        with torch.no_grad():
            call(model, batch, device, 0)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in layers if calls[n] == 0]
    if missing:
        raise SpruceError("the layer is not called when the model runs on the calibration "
                          f"data, so it has no inputs to calibrate on; exclude={missing!r}",
                          layer=missing[0])
    stages: list[list[str]] = [[] for _ in range(max(stage_of.values()) + 1)]
    for name in order:
        stages[stage_of[name]].append(name)
    return stages, calls


def _dense_rows(dense: nn.Module, stage: list[str], batch: Any, expected: int,
                device: torch.device, index: int) -> dict[str, list[torch.Tensor]]:
    """The stage's input rows in the dense model, per layer and call."""
    out: dict[str, list[torch.Tensor]] = {n: [] for n in stage}
    state = {"seen": 0, "x": None, "rows": None}

    def hook(name):
        def fn(module, args):
            if args[0] is not state["x"]:
                state["x"], state["rows"] = args[0], input_rows(name, module, args[0].detach())
            out[name].append(state["rows"])
            state["seen"] += 1
            if state["seen"] == expected:
                raise _Stop
        return fn

    handles = [dense.get_submodule(n).register_forward_pre_hook(hook(n)) for n in stage]
    try:
        _call_until_stop(dense, batch, device, index)
    finally:
        for h in handles:
            h.remove()
    return out


def collect(model: nn.Module, layers: dict[str, nn.Module], stage: list[str],
            batches: list[Any], calls: dict[str, int], device: torch.device, gram: bool,
            dense: nn.Module | None = None) -> dict[str, InputStats]:
    """Input statistics of the stage's layers over every batch; layers called on one input
    tensor share one :class:`InputStats`. With ``dense`` (the unpruned model), also the
    cross term between the dense model's inputs and the pruned model's."""
    stats: dict[str, InputStats] = {}
    expected = sum(calls[n] for n in stage)
    state: dict[str, Any] = {"seen": 0, "x": None, "stats": None, "dense": None}

    def hook(name):
        def fn(module, args):
            x = args[0]
            if x is state["x"]:
                stats[name] = state["stats"]
            else:
                rows = input_rows(name, module, x.detach())
                own = stats.get(name)
                if own is None:
                    k = rows.shape[1]
                    own = InputStats(torch.zeros(k, device=rows.device),
                                     torch.zeros(k, k, device=rows.device) if gram else None)
                    stats[name] = own
                target = None if state["dense"] is None else \
                    state["dense"][name][state["calls"][name]]
                own.add(rows, target)
                state["x"], state["stats"] = x, own
            state["calls"][name] += 1
            state["seen"] += 1
            if state["seen"] == expected:
                raise _Stop
        return fn

    handles = [layers[n].register_forward_pre_hook(hook(n)) for n in stage]
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                targets = None if dense is None else \
                    _dense_rows(dense, stage, batch, expected, device, i)
                state.update(seen=0, x=None, stats=None, dense=targets,
                             calls=dict.fromkeys(stage, 0))
                _call_until_stop(model, batch, device, i)
    finally:
        for h in handles:
            h.remove()
    return stats


# ------------------------------------------------------------------ the sequential loop

Solver = Callable[[str, nn.Module, torch.Tensor, InputStats],
                  tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class SequentialResult:
    masks: dict[str, torch.Tensor]  # 2-D view masks, on the CPU
    changed: list[str]  # layers whose kept weights the solver changed


def sequential(model: nn.Module, layers: dict[str, nn.Module], calibration: Iterable | None,
               solve: Solver, criterion: str, gram: bool, keep_weights: bool,
               dense_targets: bool = False) -> SequentialResult:
    """Solve every layer in forward order on inputs through the layers solved before it.

    ``solve(name, layer, view, stats) -> (mask view, new weight view or None)``; the view
    passed is the layer's current (masked) weight in fp32. While the pass runs, each solved
    layer computes with its new weights times its mask; afterwards the weights are the
    solver's (``keep_weights``) or restored to the originals. An error restores every
    weight, so the model is left as it was. ``dense_targets``: a copy of the model with
    every mask lifted (the original weights) runs beside it (twice the weights' memory), and
    ``stats.cross`` pairs its inputs with the pruned model's, so solvers can fit the
    *dense* outputs.
    """
    batches = batches_of(calibration, criterion)
    device = model_device(model)
    stages, calls = stages_of(model, layers, batches[0], device)
    dense = _dense_copy(model) if dense_targets else None
    backup: dict[str, torch.Tensor] = {}
    masks, changed = {}, []
    try:
        for stage in stages:
            stats = collect(model, layers, stage, batches, calls, device, gram, dense)
            for name in stage:
                layer = layers[name]
                view = layer_view(layer).detach().float()
                mask, new = solve(name, layer, view, stats[name])
                w = original_weight(layer)
                backup[name] = w.detach().to("cpu", copy=True)
                out = (view if new is None else new) * mask.to(view.device, view.dtype)
                with torch.no_grad():
                    w.copy_(unview(layer, out.to(w.device, w.dtype)))
                masks[name] = mask.detach().cpu()
                if new is not None:
                    changed.append(name)
            del stats
    except BaseException:
        _restore(layers, backup)
        raise
    if not keep_weights:
        _restore(layers, backup)
    return SequentialResult(masks, changed)


def _dense_copy(model: nn.Module) -> nn.Module:
    """A copy of the model computing with every layer's original (unmasked) weights."""
    dense = copy.deepcopy(model)
    for name, layer in list(dense.named_modules()):
        if mask_module(layer) is not None:
            set_submodule(dense, name, unparametrized(layer))
    return dense


def _restore(layers: dict[str, nn.Module], backup: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, saved in backup.items():
            w = original_weight(layers[name])
            w.copy_(saved.to(w.device))
