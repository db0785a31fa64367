"""The backend contract and its registry.

A backend turns one masked ``Linear``/``Conv2d`` into one inference module with the same
call signature. It declares the patterns it is meant for, the dtypes and devices it serves,
and says *why* it cannot serve a given layer (``reason``). Modules are built once, at
conversion: ``forward`` holds no mask logic, index building, ``.contiguous()`` or sync.

A built module is an ``nn.Module`` whose tensors are plain buffers/parameters (so it moves
with ``.to()`` and saves to safetensors), plus ``config()`` — a JSON-able dict from which
``Backend.empty(config)`` rebuilds a module of the same shapes to load a state dict into.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

_REGISTRY: dict[str, type[Backend]] = {}

ALL_PATTERNS = ("element", "vector", "block", "group", "channel", "structured")
FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def register(name: str):
    def deco(cls: type[Backend]) -> type[Backend]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


@dataclass(frozen=True)
class StateLayout:
    """What a module's ``config()`` promises, checked before anything is allocated: the
    2-D view ``(R, K)`` of the layer it replaces, its kind ("linear"/"conv2d"), its conv
    geometry (``ConvGeom.config()``, None for a Linear) and every tensor of its state dict
    as ``name → (shape, dtype)`` (dtype None: the model's float dtype)."""

    view: tuple[int, int]
    kind: str
    conv: dict[str, Any] | None
    tensors: dict[str, tuple[tuple[int, ...], torch.dtype | None]]


class Backend:
    name: ClassVar[str] = "?"
    patterns: ClassVar[tuple[str, ...]] = ALL_PATTERNS  # what it is meant for
    dtypes: ClassVar[tuple[torch.dtype, ...]] = FLOATS
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    layer_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.Linear, nn.Conv2d)
    # why its modules cannot be exported to ONNX (``spruce.export_onnx``), or None
    not_exportable: ClassVar[str | None] = None
    # why torch.compile cannot trace its modules (each one splits the compiled graph), or None
    graph_break: ClassVar[str | None] = None

    @classmethod
    def dtypes_on(cls, device_type: str) -> tuple[torch.dtype, ...]:
        """The dtypes this backend runs on ``device_type`` ("cpu", "cuda")."""
        return cls.dtypes

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this backend cannot run on this machine at all, or None."""
        return None

    @classmethod
    def reason(cls, layer: nn.Module, mask: torch.Tensor | None, dtype: torch.dtype,
               device: torch.device) -> str | None:
        """Why this backend cannot serve ``layer`` with ``mask`` (2-D view), or None.

        Subclasses extend this with structural checks on the mask.
        """
        why = cls.unavailable()
        if why:
            return why
        if not isinstance(layer, cls.layer_types):
            kinds = "/".join(t.__name__ for t in cls.layer_types)
            return f"serves {kinds} only, not {type(layer).__name__}"
        if dtype not in cls.dtypes:
            return f"does not support {dtype_name(dtype)} (supports " \
                   f"{', '.join(dtype_name(d) for d in cls.dtypes)})"
        if device.type not in cls.devices:
            return f"does not run on {device.type} (runs on {', '.join(cls.devices)})"
        return None

    @classmethod
    def from_masked(cls, layer: nn.Module, mask: torch.Tensor | None) -> nn.Module:
        """Build the inference module. ``layer.weight`` is the *unmasked* weight in the
        layer's dtype/device; ``mask`` the 2-D view mask (None: all kept)."""
        raise NotImplementedError

    @classmethod
    def empty(cls, config: dict[str, Any]) -> nn.Module:
        """A module with the shapes in ``config`` (from a built module's ``config()``),
        to load a saved state dict into. Checks ``config`` first (:meth:`layout`)."""
        raise NotImplementedError

    @classmethod
    def layout(cls, config: Any, path: Any = None, layer: str | None = None) -> StateLayout:
        """``config`` checked field by field (types, ranges; a ``SpruceError`` naming
        ``path``, ``layer`` and the field) and what it promises (:class:`StateLayout`)."""
        from ..errors import SpruceError
        raise SpruceError(f"backend {cls.name!r} modules are not saved in files", path=path,
                          layer=layer, field="backend")

    @classmethod
    def check_state(cls, module: nn.Module) -> tuple[str, str] | None:
        """After loading a state dict into ``empty(config)``: ``(field, problem)`` if its
        tensors break what the forward assumes (index range, order), else None."""
        return None


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
            torch.float64: "fp64"}.get(dtype, str(dtype))


def names() -> list[str]:
    return sorted(_REGISTRY)


def get_backend(backend: str | type[Backend]) -> type[Backend]:
    if isinstance(backend, type) and issubclass(backend, Backend):
        return backend
    if backend not in _REGISTRY:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(names())}")
    return _REGISTRY[backend]


def available() -> list[dict[str, Any]]:
    """Backends usable on this machine: name, patterns, dtypes, devices."""
    rows = []
    for name in names():
        b = _REGISTRY[name]
        devices = [d for d in b.devices if d == "cpu" or torch.cuda.is_available()]
        if b.unavailable() is None and devices:
            rows.append({"name": name, "patterns": list(b.patterns), "devices": devices,
                         "dtypes": {d: [dtype_name(t) for t in b.dtypes_on(d)] for d in devices}})
    return rows


def channels_last(x: torch.Tensor) -> bool:
    """Whether a 4-D tensor is laid out NHWC in memory (and not also plain contiguous)."""
    return x.dim() == 4 and not x.is_contiguous() and \
        x.is_contiguous(memory_format=torch.channels_last)


def masked_weight(layer: nn.Module, mask: torch.Tensor | None) -> torch.Tensor:
    """The layer's weight with ``mask`` (2-D view) applied, in the layer's shape."""
    w = layer.weight.detach()
    if mask is None:
        return w
    return w * mask.reshape(w.shape).to(device=w.device, dtype=w.dtype)


def conv_args(layer: nn.Conv2d) -> dict[str, Any]:
    """What a conv-as-GEMM needs beyond the weight (JSON-able)."""
    return {"in_channels": layer.in_channels, "out_channels": layer.out_channels,
            "kernel_size": list(layer.kernel_size), "stride": list(layer.stride),
            "padding": list(layer.padding) if not isinstance(layer.padding, str)
            else layer.padding, "dilation": list(layer.dilation),
            "padding_mode": layer.padding_mode}
