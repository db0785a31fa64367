"""``groupwise_fused``: group-wise layers as one Triton kernel each, no gathered copy.

Where ``groupwise`` gathers the kept K of the input into a new tensor and then runs a dense
GEMM (the paper's Algorithms 1–2), these modules read the kept K straight from the input
inside the GEMM's K loop:

- Linear: ``x[..., kept] @ Wc^T + b`` — the kept-feature list is loaded per K step and the
  x tile gathered from it (``spruce.kernels.groupwise_linear``);
- Conv2d: an implicit GEMM over the kept ``(c, kh, kw)`` taps, read from the input with the
  stride/padding/dilation arithmetic per tile — no im2col buffer
  (``spruce.kernels.groupwise_conv2d``); NCHW and channels-last inputs, output in the
  input's format.

Options (``convert(..., activation=..., precision=...)``): ``activation`` None/"relu"/
"gelu" fuses that function into the epilogue (the module then computes act(layer(x)), so
only use it where the model's own activation is dropped); ``precision`` for fp32 models:
"tf32" (tensor cores, ~3e-4 relative error), "tf32x3" (near fp32) or "auto" — "tf32" when
torch allows TF32 (``torch.backends.cuda.matmul.allow_tf32`` or ``cudnn.allow_tf32``),
else "tf32x3"; ignored for fp16/bf16. CUDA only (the kernels' CPU interpreter is for tests).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import nn

from ..fileformat import Fields, check_index
from .base import Backend, StateLayout, masked_weight, register
from .face import DenseFace, rename_legacy
from .groupwise import compaction_reason, kept_columns
from .im2col import ConvGeom


def resolve_precision(precision: str) -> str:
    if precision != "auto":
        return precision
    allowed = torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
    return "tf32" if allowed else "tf32x3"


def _load_legacy(module: nn.Module, state_dict, prefix, *args, **kwargs) -> None:
    rename_legacy(state_dict, prefix, {"weight": "packed"})  # files saved before the rename
    nn.Module._load_from_state_dict(module, state_dict, prefix, *args, **kwargs)


class FusedGroupwiseLinear(DenseFace):
    def __init__(self, kept: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 in_features: int, kept_count: int, activation: str | None, precision: str):
        super().__init__()
        self.kept_count = kept_count
        self.linear_face(in_features, weight.shape[0])
        self.activation, self.precision = activation, precision
        self.register_buffer("kept", kept)                  # (Kp,) int32, padded
        self.register_buffer("packed", weight)              # (R, Kp), zero pad columns
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:     # x: (..., K)
        from ..kernels.groupwise_linear import groupwise_linear
        return groupwise_linear(x, self.kept, self.packed, self.bias, self.activation,
                                self.precision)

    def dense_weight(self) -> torch.Tensor:  # (R, K); pad columns add zeros
        w = self.packed.new_zeros(self.out_features, self.in_features)
        return w.index_add_(1, self.kept.long(), self.packed)

    _load_from_state_dict = _load_legacy

    def config(self) -> dict[str, Any]:
        return {"backend": "groupwise_fused", "kind": "linear", "in_features": self.in_features,
                "out_features": self.out_features, "kept": self.kept_count,
                "padded": self.kept.numel(), "bias": self.bias is not None,
                "activation": self.activation, "precision": self.precision}


class FusedGroupwiseConv2d(DenseFace):
    def __init__(self, taps: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 geom: ConvGeom, in_channels: int, kept_count: int, activation: str | None,
                 precision: str):
        super().__init__()
        self.geom, self.kept_count = geom, kept_count
        self.conv_face(geom, in_channels)
        self.activation, self.precision = activation, precision
        self.register_buffer("taps", taps)                  # (3, Kp) int32: c, kh·dil, kw·dil
        self.register_buffer("packed", weight)              # (O, Kp) in the taps' order
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:     # x: (B, C, H, W)
        from ..kernels.groupwise_conv2d import groupwise_conv2d
        g = self.geom
        return groupwise_conv2d(x, self.taps, self.packed, self.bias, g.kernel_size, g.stride,
                                g.padding, g.dilation, self.activation, self.precision)

    def dense_weight(self) -> torch.Tensor:  # (O, C, kh, kw); pad taps add zeros
        (kh, kw), (dh, dw) = self.kernel_size, self.dilation
        c, row, col = self.taps.long()
        column = c * kh * kw + (row // dh) * kw + col // dw  # the (c, kh, kw) view column
        w = self.packed.new_zeros(self.out_channels, self.in_channels * kh * kw)
        return w.index_add_(1, column, self.packed).reshape(self.out_channels,
                                                            self.in_channels, kh, kw)

    _load_from_state_dict = _load_legacy

    def config(self) -> dict[str, Any]:
        return {"backend": "groupwise_fused", "kind": "conv2d", "in_channels": self.in_channels,
                "kept": self.kept_count, "padded": self.taps.shape[1],
                "bias": self.bias is not None, "activation": self.activation,
                "precision": self.precision, **self.geom.config()}


@register("groupwise_fused")
class GroupwiseFused(Backend):
    patterns = ("group",)
    devices = ("cuda",)
    not_exportable = "its Triton kernels have no ONNX form"

    @classmethod
    def unavailable(cls) -> str | None:
        if importlib.util.find_spec("triton") is None:
            return "needs triton (pip install 'spruce[gpu]')"
        if not torch.cuda.is_available():
            return "needs a CUDA GPU (its Triton kernels run on CUDA only)"
        return None

    @classmethod
    def reason(cls, layer, mask, dtype, device, groups_from: str = "mask") -> str | None:
        return (super().reason(layer, mask, dtype, device)
                or compaction_reason(layer, mask, groups_from))

    @classmethod
    def from_masked(cls, layer: nn.Module, mask: torch.Tensor | None, groups_from: str = "mask",
                    activation: str | None = None, precision: str = "auto") -> nn.Module:
        from ..kernels.common import activation_code, check_precision
        activation_code(activation)
        precision = check_precision(resolve_precision(precision))
        w = masked_weight(layer, mask).reshape(layer.weight.shape[0], -1)   # (R, K)
        kept = kept_columns(w, mask, groups_from).to(torch.long)
        if kept.numel() == 0:   # every column pruned: one zero column, output = act(bias)
            kept = torch.zeros(1, dtype=torch.long)
        compact = w.index_select(1, kept.to(w.device))
        bias = layer.bias
        if isinstance(layer, nn.Conv2d):
            from ..kernels.groupwise_conv2d import pack_conv2d
            taps, weight = pack_conv2d(compact, kept, layer.in_channels,
                                       tuple(layer.kernel_size), tuple(layer.dilation))
            return FusedGroupwiseConv2d(taps, weight, bias, ConvGeom.of(layer),
                                        layer.in_channels, kept.numel(), activation, precision)
        from ..kernels.groupwise_linear import pack_linear
        idx, weight = pack_linear(compact, kept, layer.in_features)
        return FusedGroupwiseLinear(idx, weight, bias, layer.in_features, kept.numel(),
                                    activation, precision)

    @classmethod
    def layout(cls, config, path=None, layer=None) -> StateLayout:
        f = Fields(config, path, layer, what="a groupwise_fused layer")
        try:
            from ..kernels.common import ACTIVATIONS, K_MULTIPLE, PRECISIONS
            from ..kernels.groupwise_conv2d import TAP_GROUP
        except ImportError:
            f.fail("backend", "groupwise_fused needs triton (pip install 'spruce[gpu]')")
        kind = f.str("kind", ("linear", "conv2d"))
        geom = None
        if kind == "linear":
            r, k = f.int("out_features"), f.int("in_features")
        else:
            geom = ConvGeom.from_fields(f)
            r, k = geom.out_channels, f.int("in_channels") * geom.kernel_size[0] * \
                geom.kernel_size[1]
        kept = f.int("kept", 1, k)
        taps = 1 if geom is None else geom.kernel_size[0] * geom.kernel_size[1]
        f.int("padded", kept, kept + taps * TAP_GROUP + K_MULTIPLE)  # see pack_linear/_conv2d
        padded = config["padded"]
        if f.get("activation", str, optional=True) not in ACTIVATIONS:
            f.fail("activation", f"must be one of {list(ACTIVATIONS)}")
        f.str("precision", PRECISIONS)
        idx = ((padded,), torch.int32) if geom is None else ((3, padded), torch.int32)
        tensors = {"kept" if geom is None else "taps": idx, "packed": ((r, padded), None),
                   **({"bias": ((r,), None)} if f.bool("bias") else {})}
        return StateLayout((r, k), kind, None if geom is None else geom.config(), tensors)

    @classmethod
    def check_state(cls, module: nn.Module) -> tuple[str, str] | None:
        if isinstance(module, FusedGroupwiseLinear):
            why = check_index(module.kept, module.in_features, "kept", strict_order=False)
            return None if why is None else ("kept", why)
        (kh, kw), (dh, dw) = module.geom.kernel_size, module.geom.dilation
        for row, size, what in [(0, module.in_channels, "channel"),
                                (1, (kh - 1) * dh + 1, "row offset"),
                                (2, (kw - 1) * dw + 1, "column offset")]:
            why = check_index(module.taps[row], size, f"taps {what}", strict_order=False)
            if why:
                return "taps", why
        return None

    @classmethod
    def empty(cls, config: dict[str, Any]) -> nn.Module:
        cls.layout(config)
        rows = config["out_features"] if config["kind"] == "linear" else config["out_channels"]
        bias = torch.zeros(rows) if config["bias"] else None
        weight = torch.zeros(rows, config["padded"])
        if config["kind"] == "linear":
            return FusedGroupwiseLinear(torch.zeros(config["padded"], dtype=torch.int32), weight,
                                        bias, config["in_features"], config["kept"],
                                        config["activation"], config["precision"])
        return FusedGroupwiseConv2d(torch.zeros(3, config["padded"], dtype=torch.int32), weight,
                                    bias, ConvGeom.from_config(config), config["in_channels"],
                                    config["kept"], config["activation"], config["precision"])
