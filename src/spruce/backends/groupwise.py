"""``groupwise``: the paper's Algorithms 1 and 2 — gather the kept K, then a dense GEMM.

Linear (Alg. 2): keep the input features whose column of the view is kept, multiply with
the compacted weight ``W[:, kept]``. Conv2d (Alg. 1): im2col, keep the kept rows of the
column matrix, GEMM, reshape. Pruned groups are found either from the mask (``"mask"``) or
from all-zero columns of the baked weight (``"zeros"``, the paper's "sum is 0").

Two layouts for the gather (the paper's Fig. 6):
- ``"rows"`` — gather whole rows of the K-major operand (``cols[B, K, L]`` for a conv,
  ``x^T[K, N]`` for a linear): contiguous, coalesced reads;
- ``"cols"`` — gather columns of the K-minor operand (``x[N, K]``, ``cols^T[B, L, K]``):
  strided reads.
``layout="auto"`` takes ``"rows"`` for a conv (unfold already yields K-major rows) and
``"cols"`` for a linear (its input is K-minor; the transposed form costs two transposes).
A conv whose kept columns are whole input channels (the group pattern with
``unit="channel"``) takes ``"channels"``: gather the kept channels of the input and run
a dense convolution on them — no im2col.
Any mask with all-zero columns can use this backend; entries pruned inside kept columns
stay as zeros in the compacted weight.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..fileformat import Fields, check_index
from ..view import taps
from .base import Backend, StateLayout, channels_last, masked_weight, register
from .face import DenseFace, rename_legacy, scatter_columns
from .im2col import ConvGeom, conv_reason

LAYOUTS = ("rows", "cols", "channels")


def whole_channels(kept: torch.Tensor, taps: int) -> bool:
    """Whether ``kept`` (sorted view columns) is every tap of some input channels."""
    if kept.numel() % taps:
        return False
    grid = kept.reshape(-1, taps)
    first = grid[:, :1]
    return bool((first % taps == 0).all() and (grid == first + torch.arange(taps)).all())


@functools.cache
def _triton_gather():
    """``kernels.gather.gather_columns`` where triton is installed, else None."""
    if importlib.util.find_spec("triton") is None:
        return None
    from ..kernels.gather import gather_columns
    return gather_columns


TRITON_GATHER_MIN = 1 << 24  # input elements from which eager calls take the Triton gather


def gather_last(x: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``x.index_select(-1, kept)``; on CUDA with triton, the one-pass Triton gather (1.2–2×
    faster on the GPU: ``benchmarks/results/h100/gather``) when the call is captured in a
    CUDA graph or x has at least ``TRITON_GATHER_MIN`` elements — below that, in eager mode,
    Triton's launch cost on the CPU outweighs the saving (BERT-base eager: 1.9× dense)."""
    if x.is_cuda and x.stride(-1) == 1 and not torch.jit.is_tracing() \
            and not torch.compiler.is_compiling() \
            and (x.numel() >= TRITON_GATHER_MIN or torch.cuda.is_current_stream_capturing()):
        gather = _triton_gather()
        if gather is not None:
            flat = x.reshape(-1, x.shape[-1])
            return gather(flat, kept).reshape(*x.shape[:-1], kept.numel())
    return x.index_select(-1, kept)


def kept_columns(weight_view: torch.Tensor, mask: torch.Tensor | None, groups_from: str
                 ) -> torch.Tensor:
    """Indices of the K columns that take part in the product."""
    if groups_from == "mask":
        if mask is None:
            raise ValueError("groups_from='mask' needs a mask; use groups_from='zeros' for "
                             "a baked weight")
        return mask.any(0).nonzero().flatten()
    if groups_from == "zeros":
        return (weight_view != 0).any(0).nonzero().flatten().cpu()
    raise ValueError(f"groups_from must be 'mask' or 'zeros'; got {groups_from!r}")


class GroupwiseLinear(DenseFace):
    def __init__(self, weight: torch.Tensor, kept: torch.Tensor, bias: torch.Tensor | None,
                 in_features: int, layout: str):
        super().__init__()
        self.layout = layout
        self.linear_face(in_features, weight.shape[0])
        self.register_buffer("kept", kept.to(weight.device))  # (Kc,) long
        self.register_buffer("packed", weight.contiguous())  # (R, Kc)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., K)
        if self.layout == "cols":
            return F.linear(gather_last(x, self.kept), self.packed, self.bias)
        lead = x.shape[:-1]
        xt = x.reshape(-1, x.shape[-1]).t()  # (K, N) view
        y = self.packed @ xt.index_select(0, self.kept)  # (R, N)
        if self.bias is not None:
            y = y + self.bias[:, None]
        return y.t().reshape(*lead, -1)

    def dense_weight(self) -> torch.Tensor:  # (R, K)
        return scatter_columns(self.packed, self.kept, self.in_features)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        rename_legacy(state_dict, prefix, {"weight": "packed"})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def config(self) -> dict[str, Any]:
        return {"backend": "groupwise", "kind": "linear", "in_features": self.in_features,
                "out_features": self.out_features, "kept": self.kept.numel(),
                "bias": self.bias is not None, "layout": self.layout}


class GroupwiseConv2d(DenseFace):
    def __init__(self, weight: torch.Tensor, kept: torch.Tensor, bias: torch.Tensor | None,
                 geom: ConvGeom, in_channels: int, layout: str):
        super().__init__()
        self.geom, self.layout = geom, layout
        self.conv_face(geom, in_channels)
        self.register_buffer("kept", kept.to(weight.device))  # (Kc,)
        self.register_buffer("packed", weight.contiguous())  # (O, Kc)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())  # (O,)
        taps = geom.kernel_size[0] * geom.kernel_size[1]
        self.register_buffer("channels", self.kept[::taps].div(taps, rounding_mode="floor")
                             if layout == "channels" else None)  # (Kc / taps,) kept channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        if self.layout == "channels":
            g = self.geom
            w = self.packed.reshape(g.out_channels, -1, *g.kernel_size)
            if channels_last(x):
                # NHWC in memory: the channels are the columns of an (N·H·W, C) matrix; the
                # gathered input stays channels-last (cuDNN's fast path)
                n, c, h, wd = x.shape
                xs = gather_last(x.permute(0, 2, 3, 1).reshape(-1, c), self.channels)
                xs = xs.reshape(n, h, wd, -1).permute(0, 3, 1, 2)
            else:
                xs = x.index_select(1, self.channels)
            return F.conv2d(xs, w, self.bias, g.stride, g.padding, g.dilation)
        cols = self.geom.unfold(x)  # (B, K, L)
        if self.layout == "rows":
            y = self.packed @ cols.index_select(1, self.kept)  # (B, O, L)
        else:
            y = (cols.transpose(1, 2).index_select(2, self.kept) @ self.packed.t()).transpose(1, 2)
        if self.bias is not None:
            y = y + self.bias[:, None]
        return self.geom.fold(y, x.shape)

    def dense_weight(self) -> torch.Tensor:  # (O, C, kh, kw)
        k = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        w = scatter_columns(self.packed, self.kept, k)
        return w.reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        rename_legacy(state_dict, prefix, {"weight": "packed"})
        bias = state_dict.get(prefix + "bias")
        if bias is not None and bias.dim() == 2:  # saved as (O, 1) before
            state_dict[prefix + "bias"] = bias[:, 0]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def config(self) -> dict[str, Any]:
        return {"backend": "groupwise", "kind": "conv2d", "in_channels": self.in_channels,
                "kept": self.kept.numel(), "bias": self.bias is not None,
                "layout": self.layout, **self.geom.config()}


def compaction_reason(layer: nn.Module, mask: torch.Tensor | None,
                      groups_from: str = "mask") -> str | None:
    """Why a layer cannot run as a compacted-K GEMM (any group-wise backend), or None."""
    why = conv_reason(layer)
    if why:
        return why
    w = masked_weight(layer, mask).reshape(layer.weight.shape[0], -1)
    if kept_columns(w, mask, groups_from).numel() == w.shape[1]:
        return "no all-zero column in the weight view: nothing to compact"
    return None


@register("groupwise")
class Groupwise(Backend):
    patterns = ("group", "structured")

    @classmethod
    def reason(cls, layer, mask, dtype, device, groups_from: str = "mask") -> str | None:
        return (super().reason(layer, mask, dtype, device)
                or compaction_reason(layer, mask, groups_from))

    @classmethod
    def from_masked(cls, layer: nn.Module, mask: torch.Tensor | None, groups_from: str = "mask",
                    layout: str = "auto") -> nn.Module:
        if layout not in LAYOUTS + ("auto",):
            raise ValueError(f"layout must be one of {LAYOUTS + ('auto',)}; got {layout!r}")
        w = masked_weight(layer, mask).reshape(layer.weight.shape[0], -1)  # (R, K)
        kept = kept_columns(w, mask, groups_from)
        if kept.numel() == 0:  # every column pruned: keep one zero column, output = bias
            kept = torch.zeros(1, dtype=torch.long)
        compact = w.index_select(1, kept.to(w.device))
        bias = layer.bias
        if isinstance(layer, nn.Conv2d):
            whole = whole_channels(kept, taps(layer))
            if layout == "auto":
                layout = "channels" if whole else "rows"
            if layout == "channels" and not whole:
                raise ValueError("layout='channels' needs whole input channels kept (prune "
                                 "with the group pattern's unit='channel'); use layout='auto'")
            return GroupwiseConv2d(compact, kept, bias, ConvGeom.of(layer), layer.in_channels,
                                   layout)
        if layout == "channels":
            raise ValueError("layout='channels' is for Conv2d; a Linear takes 'rows' or 'cols'")
        return GroupwiseLinear(compact, kept, bias, layer.in_features,
                               "cols" if layout == "auto" else layout)

    @classmethod
    def layout(cls, config, path=None, layer=None) -> StateLayout:
        f = Fields(config, path, layer, what="a groupwise layer")
        kind = f.str("kind", ("linear", "conv2d"))
        geom = None
        if kind == "linear":
            r, k = f.int("out_features"), f.int("in_features")
            f.str("layout", ("rows", "cols"))
        else:
            geom = ConvGeom.from_fields(f)
            r, k = geom.out_channels, f.int("in_channels") * geom.kernel_size[0] * \
                geom.kernel_size[1]
            f.str("layout", LAYOUTS)
        kept = f.int("kept", 1, k)
        bias = f.bool("bias")
        tensors = {"kept": ((kept,), torch.int64), "packed": ((r, kept), None)}
        if bias:
            tensors["bias"] = ((r,), None)
        if geom is not None and config["layout"] == "channels":
            per = geom.kernel_size[0] * geom.kernel_size[1]
            if kept % per:
                f.fail("kept", f"{kept} is not a whole number of channels of {per} taps")
            tensors["channels"] = ((kept // per,), torch.int64)
        return StateLayout((r, k), kind, None if geom is None else geom.config(), tensors)

    @classmethod
    def check_state(cls, module: nn.Module) -> tuple[str, str] | None:
        if isinstance(module, GroupwiseLinear):
            why = check_index(module.kept, module.in_features, "kept")
            return None if why is None else ("kept", why)
        per = module.geom.kernel_size[0] * module.geom.kernel_size[1]
        why = check_index(module.kept, module.in_channels * per, "kept")
        if why is None and module.layout == "channels" and not (
                whole_channels(module.kept, per)
                and torch.equal(module.channels, module.kept[::per].div(per,
                                                                        rounding_mode="floor"))):
            why = "kept and channels do not list the same whole input channels"
        return None if why is None else ("kept", why)

    @classmethod
    def empty(cls, config: dict[str, Any]) -> nn.Module:
        cls.layout(config)
        kept = torch.zeros(config["kept"], dtype=torch.long)
        bias_rows = config["out_features"] if config["kind"] == "linear" \
            else config["out_channels"]
        bias = torch.zeros(bias_rows) if config["bias"] else None
        weight = torch.zeros(bias_rows, config["kept"])
        if config["kind"] == "linear":
            return GroupwiseLinear(weight, kept, bias, config["in_features"], config["layout"])
        return GroupwiseConv2d(weight, kept, bias, ConvGeom.from_config(config),
                               config["in_channels"], config["layout"])
