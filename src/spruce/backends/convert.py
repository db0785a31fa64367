"""``spruce.convert``: every masked layer becomes its backend's inference module.

The input model is left untouched; the result is a deep copy in inference mode. Layers the
backend cannot serve for a structural reason stay dense and are listed with the reason;
asking a backend for a pattern or dtype it does not serve is an error naming the layer.
With ``verify=True`` each converted layer is compared with the dense masked reference on
random inputs (shapes taken from ``example_input`` when given), and, given
``example_input``, the whole converted model with the pruned one (``wholemodel``): layers
that make it fail go back to dense with the reason.

``example_input`` is a tensor, a tuple of positional inputs or a dict of keyword inputs.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import SpruceError
from ..masks import get_mask, mask_info, mask_module, masked_layers, unparametrized
from ..view import prunable_layers
from .adapt import Adapter, adapter_for
from .base import Backend, channels_last, dtype_name, get_backend, names
from .dense import Dense
from .wholemodel import aliases, bypass_reason, check_whole_model, run, swap, tensors_of


@dataclass
class LayerConversion:
    name: str
    kind: str  # Linear / Conv2d
    pattern: str  # pattern name(s) of the mask, "-" when found from zeros
    backend: str  # what runs the layer now
    reason: str | None = None  # why it stayed dense
    rel_error: float | None = None  # ‖out − ref‖ / ‖ref‖ at verification


@dataclass
class ConversionReport:
    backend: str
    dtype: str
    device: str
    rows: list[LayerConversion] = field(default_factory=list)

    @property
    def fallbacks(self) -> list[LayerConversion]:
        return [r for r in self.rows if r.reason is not None]

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "dtype": self.dtype, "device": self.device,
                "rows": [asdict(r) for r in self.rows]}


def tolerance(dtype: torch.dtype, device: torch.device) -> float:
    """Normwise relative error allowed against the float64 dense reference."""
    if dtype in (torch.float16, torch.bfloat16):
        return 2e-2
    if device.type == "cuda" and (torch.backends.cuda.matmul.allow_tf32
                                  or torch.backends.cudnn.allow_tf32):
        return 5e-3  # TF32 matrix units (cuDNN convolutions use them by default)
    return 1e-4


DTYPE_NAMES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
               "float16": torch.float16, "half": torch.float16, "bf16": torch.bfloat16,
               "bfloat16": torch.bfloat16}
COMMON_OPTIONS = ("groups_from",)  # read by convert itself (which layers to convert)


def as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``dtype`` as a torch dtype: "fp16"/"bf16"/"fp32" (and float16, ...) are accepted."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPE_NAMES:
        return DTYPE_NAMES[dtype.lower()]
    raise SpruceError(f"dtype={dtype!r} is not a dtype; give torch.float32/float16/bfloat16 "
                      "or one of 'fp32', 'fp16', 'bf16'", field="dtype")


def option_names(b: type[Backend]) -> set[str]:
    """The options backend ``b`` reads (from ``from_masked`` and ``reason``)."""
    skip = {"cls", "layer", "mask", "dtype", "device"}
    return {n for fn in (b.from_masked, b.reason) for n in inspect.signature(fn).parameters
            if n not in skip} | set(COMMON_OPTIONS)


def check_options(b: type[Backend], options: dict[str, Any]) -> None:
    """An option no backend reads is a typo: refuse it, naming the valid ones."""
    valid = option_names(b)
    unknown = sorted(set(options) - valid)
    if unknown:
        raise SpruceError(f"backend '{b.name}' has no option {', '.join(map(repr, unknown))}; "
                          f"its options: {', '.join(sorted(valid))}", field=unknown[0])


def _accepted(fn, options: dict[str, Any]) -> dict[str, Any]:
    params = inspect.signature(fn).parameters
    return {k: v for k, v in options.items() if k in params}


def _pattern_names(layer: nn.Module) -> list[str]:
    return [p["name"] for p in mask_info(layer).get("patterns", [])]


def first_float(model: nn.Module) -> torch.Tensor | None:
    """The model's first floating-point parameter or buffer (its dtype and device), or None."""
    return next((t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()),
                None)


def cast_input(example: Any, dtype: torch.dtype, device: torch.device) -> Any:
    """Floating tensors of an example input (a tensor, a tuple/list of positional inputs or
    a dict of keyword inputs, nested) in ``dtype`` on ``device``."""
    if isinstance(example, dict):
        return {k: cast_input(v, dtype, device) for k, v in example.items()}
    if isinstance(example, (tuple, list)):
        return type(example)(cast_input(v, dtype, device) for v in example)
    if not isinstance(example, torch.Tensor):
        return example
    return example.to(device=device, dtype=dtype) if example.is_floating_point() \
        else example.to(device)


def capture_input_shapes(model: nn.Module, example_input: Any, names_: list[str]
                         ) -> dict[str, tuple[torch.Size, bool]]:
    """(input shape, channels-last?) seen by each named layer in one forward pass of
    ``example_input``."""
    shapes: dict[str, tuple[torch.Size, bool]] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            shapes.setdefault(name, (args[0].shape, channels_last(args[0])))
        return hook

    hooks = [model.get_submodule(n).register_forward_pre_hook(hook_for(n)) for n in names_]
    try:
        run(model, example_input)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _probe_input(layer: nn.Module, shape: torch.Size | None, dtype, device,
                 adapter: Adapter | None = None) -> torch.Tensor:
    if shape is not None:  # fewer samples; an unbatched Conv1d input (C, L) stays whole
        unbatched = isinstance(layer, nn.Conv1d) and len(shape) == 2
        shape = tuple(shape) if unbatched else (min(shape[0], 4), *shape[1:])
    elif adapter is not None:
        shape = adapter.probe_shape(layer)
    elif isinstance(layer, nn.Conv2d):
        k = max(d * (s - 1) + 1 for d, s in zip(layer.dilation, layer.kernel_size, strict=False))
        side = k + 2 * max(layer.stride) + 3
        shape = (2, layer.in_channels, side, side + 1)
    else:
        shape = (3, layer.in_features)
    return torch.randn(shape, device=device).to(dtype)


def verify_layer(name: str, backend: str, module: nn.Module, reference: nn.Module,
                 shape: torch.Size | None, dtype: torch.dtype, device: torch.device,
                 adapter: Adapter | None = None) -> float:
    """Relative error of ``module`` against ``reference`` (dense masked, run in float64)."""
    x = _probe_input(reference, shape, dtype, device, adapter)
    with torch.no_grad():
        out = module(x).double()
        ref = copy.deepcopy(reference).double()(x.double())
    err = float((out - ref).norm() / ref.norm().clamp_min(1e-12))
    tol = tolerance(dtype, device)
    if not err <= tol:  # also catches NaN
        raise ValueError(f"layer '{name}': backend {backend} disagrees with the dense masked "
                         f"reference (relative error {err:.2e} > {tol:.0e} in "
                         f"{dtype_name(dtype)}); please report this as a bug")
    return err


def _targets(model: nn.Module, groups_from: str) -> dict[str, nn.Module]:
    """Layers to convert: the masked ones, or (``groups_from='zeros'``) every prunable one."""
    if groups_from == "zeros":
        return prunable_layers(model)[0]
    return masked_layers(model)


@dataclass
class Target:
    """One layer to convert: its plain twin (unmasked weight), mask and input shape."""

    name: str
    layer: nn.Module
    mask: torch.Tensor | None  # 2-D view, CPU; None: found from zeros / all kept
    patterns: list[str]
    input_shape: torch.Size | None  # from example_input, when given
    channels_last: bool = False  # the example input reached the layer in channels-last
    # a layer served through an equivalent Linear/Conv2d (``adapt``): then ``layer``/``mask``
    # are the equivalent's, ``original``/``original_mask`` the layer's own (weight-shaped)
    adapter: Adapter | None = None
    original: nn.Module | None = None
    original_mask: torch.Tensor | None = None

    @property
    def kind(self) -> str:
        return type(self.original if self.original is not None else self.layer).__name__


def adapted(t: Target) -> Target:
    """``t`` with its layer replaced by the equivalent Linear/Conv2d, when it has one."""
    adapter = adapter_for(t.layer)
    if adapter is None:
        return t
    raw = None if t.mask is None else t.original_mask
    layer, mask = adapter.equivalent(t.layer, raw)
    return Target(t.name, layer, mask, t.patterns, t.input_shape, t.channels_last, adapter,
                  t.layer, raw)


def prepare(model: nn.Module, dtype: torch.dtype | None, example_input: Any,
            groups_from: str = "mask") -> tuple[nn.Module, torch.device, torch.dtype,
                                                list[Target]]:
    """A deep copy in ``dtype`` and the layers to convert (the model is not touched)."""
    if not _targets(model, groups_from):
        warnings.warn("nothing to convert: the model carries no spruce masks; returning a "
                      "dense copy", stacklevel=3)
    dtype = as_dtype(dtype)
    _check_finite(_targets(model, groups_from))
    new = copy.deepcopy(model).eval()  # eval: capturing shapes must not move BN statistics
    if dtype is not None:
        new = new.to(dtype)
    first = next(new.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and dtype is None else dtype or torch.float32
    layers = _targets(new, groups_from)
    shapes = capture_input_shapes(new, cast_input(example_input, dtype, device), list(layers)) \
        if example_input is not None and layers else {}
    targets = []
    for name, layer in layers.items():
        mask = get_mask(layer)
        raw = mask_module(layer)
        targets.append(adapted(Target(name, unparametrized(layer),
                                      None if mask is None else mask.detach().cpu(),
                                      _pattern_names(layer), *shapes.get(name, (None, False)),
                                      original_mask=None if raw is None
                                      else raw.mask.detach().cpu())))
    return new, device, dtype, targets


def _check_finite(layers: dict[str, nn.Module]) -> None:
    for name, layer in layers.items():
        w = layer.weight
        if w.is_floating_point() and not bool(torch.isfinite(w).all()):
            raise SpruceError("its weight holds NaN or inf (a diverged training run?); "
                              "convert a model with finite weights", layer=name)


def check_serves(b: type[Backend], t: Target, dtype: torch.dtype, device: torch.device) -> None:
    """Raise if ``b`` was asked for a pattern or dtype it does not serve (bad input)."""
    if t.patterns and not set(t.patterns) & set(b.patterns) and b is not Dense:
        able = [n for n in names() if set(t.patterns) & set(get_backend(n).patterns)]
        raise ValueError(f"layer '{t.name}': backend '{b.name}' does not serve the "
                         f"{'+'.join(t.patterns)} pattern; backends that do: {', '.join(able)}")
    if dtype not in b.dtypes_on(device.type):
        raise ValueError(f"layer '{t.name}': backend '{b.name}' does not support "
                         f"{dtype_name(dtype)} on {device.type}; it supports "
                         f"{', '.join(dtype_name(d) for d in b.dtypes_on(device.type))}")


def build_module(b: type[Backend], t: Target, options: dict[str, Any]) -> nn.Module:
    """``b``'s module for ``t``; an adapted layer's is wrapped to take the original input
    (dense: the original layer type, masked)."""
    if t.adapter is not None and b is Dense:
        return Dense.from_masked(t.original, t.original_mask)
    module = b.from_masked(t.layer, t.mask, **_accepted(b.from_masked, options))
    return module if t.adapter is None else t.adapter.wrap(module)


def finish(new: nn.Module, targets: list[Target], modules: dict[str, nn.Module],
           rows: dict[str, LayerConversion], report: ConversionReport, dtype: torch.dtype,
           device: torch.device, verify: bool, example_input: Any = None) -> nn.Module:
    """Verify each built module against its dense masked layer, swap it in (under every
    name of the layer), check the whole model on ``example_input`` (when given and
    ``verify``), attach the report."""
    example = cast_input(example_input, dtype, device) if example_input is not None else None
    ref = tensors_of(run(new.eval(), example)) if example is not None and verify and targets \
        else None
    alias = aliases(new)
    for t in targets:
        row = rows[t.name]
        if verify:
            row.rel_error = verify_layer(t.name, row.backend, modules[t.name],
                                         build_module(Dense, t, {}), t.input_shape,
                                         dtype, device, t.adapter)
        swap(new, t.name, modules[t.name], alias)
        report.rows.append(row)
    if ref is not None:
        send_back(new, targets, modules, rows, example, ref, dtype)
    new.eval()
    new.requires_grad_(False)
    new.spruce_report = report
    return new


def send_back(new: nn.Module, targets: list[Target], modules: dict[str, nn.Module],
              rows: dict[str, LayerConversion], example: Any, ref: list[torch.Tensor],
              dtype: torch.dtype) -> None:
    """Whole-model check: converted layers that make ``new`` fail or differ from the pruned
    model's outputs ``ref`` become dense (``modules``/``rows`` updated, reason given)."""
    fast = {t.name: modules[t.name] for t in targets if rows[t.name].backend != Dense.name}
    dense = {t.name: build_module(Dense, t, {}) for t in targets if t.name in fast}
    for name, why in check_whole_model(new, example, ref, fast, dense, dtype).items():
        rows[name].backend, rows[name].rel_error = Dense.name, None
        rows[name].reason = f"whole-model check on example_input: {why}"
        modules[name] = dense[name]


def layer_reason(b: type[Backend], model: nn.Module, t: Target, dtype: torch.dtype,
                 device: torch.device, options: dict[str, Any]) -> str | None:
    """Why ``b`` cannot serve ``t`` inside ``model`` (the layer itself, or its parent)."""
    if b is Dense:
        return None
    return bypass_reason(model, t.name) or b.reason(t.layer, t.mask, dtype, device,
                                                    **_accepted(b.reason, options))


def convert(model: nn.Module, backend: str | type[Backend] = "dense",
            dtype: torch.dtype | None = None, example_input: Any = None, verify: bool = True,
            **options: Any) -> nn.Module:
    """A new inference module running every masked layer on ``backend``.

    ``options`` go to the backend (e.g. ``layout=`` for groupwise; ``groups_from="zeros"``
    also converts baked layers found by their all-zero columns). The per-layer report is
    at ``result.spruce_report``. (``backend="auto"`` lives in :func:`spruce.convert`.)
    """
    b = get_backend(backend)
    check_options(b, options)
    why = b.unavailable()
    if why:
        raise ValueError(f"backend '{b.name}' is not available here: {why}")
    new, device, dtype, targets = prepare(model, dtype, example_input,
                                          options.get("groups_from", "mask"))
    rows: dict[str, LayerConversion] = {}
    for t in targets:  # decide everything before changing anything
        check_serves(b, t, dtype, device)
        reason = layer_reason(b, new, t, dtype, device, options)
        rows[t.name] = LayerConversion(t.name, t.kind,
                                       "+".join(t.patterns) or "-",
                                       Dense.name if reason else b.name, reason)
    modules = {t.name: build_module(get_backend(rows[t.name].backend), t, options)
               for t in targets}
    report = ConversionReport(b.name, dtype_name(dtype), str(device))
    return finish(new, targets, modules, rows, report, dtype, device, verify, example_input)
