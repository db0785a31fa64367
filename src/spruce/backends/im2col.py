"""Conv2d as GEMM in the 2-D view's order: ``out[b] = W[O, K] @ cols[b][K, L]``.

``F.unfold`` lays K out as ``(c, kh, kw)`` — the same order as the weight view — so a column
kept in the view is a row kept in ``cols``. Shared by every backend that runs a conv as a
matrix product (CSR, BSR, group-wise, 2:4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..fileformat import Fields


@dataclass(frozen=True)
class ConvGeom:
    """The geometry of a Conv2d that a GEMM form needs."""

    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @classmethod
    def of(cls, layer: nn.Conv2d) -> ConvGeom:
        return cls(layer.out_channels, tuple(layer.kernel_size), tuple(layer.stride),
                   tuple(layer.padding), tuple(layer.dilation))

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ConvGeom:
        return cls.from_fields(Fields(cfg, what="a conv geometry"))

    @classmethod
    def from_fields(cls, f: Fields) -> ConvGeom:
        """Checked: sizes, stride and dilation >= 1, padding >= 0."""
        return cls(f.int("out_channels"), f.ints("kernel_size", 2), f.ints("stride", 2),
                   f.ints("padding", 2, lo=0), f.ints("dilation", 2))

    def config(self) -> dict[str, Any]:
        return {"out_channels": self.out_channels, "kernel_size": list(self.kernel_size),
                "stride": list(self.stride), "padding": list(self.padding),
                "dilation": list(self.dilation)}

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (self.kernel_size, self.stride,
                                                  self.padding, self.dilation)
        ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        return ho, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def unfold(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` → ``[B, C·kh·kw, L]`` (L = Ho·Wo)."""
        return F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)

    def fold(self, y: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
        """``[B, O, L]`` → ``[B, O, Ho, Wo]``."""
        ho, wo = self.out_hw(x_shape[-2], x_shape[-1])
        return y.reshape(y.shape[0], self.out_channels, ho, wo)


def conv_reason(layer: nn.Module) -> str | None:
    """Why a Conv2d cannot run as im2col + GEMM here, or None (Linear: always None)."""
    if not isinstance(layer, nn.Conv2d):
        return None
    if isinstance(layer.padding, str):
        return f"string padding {layer.padding!r} is not supported; give the padding as ints"
    if layer.padding_mode != "zeros":
        return f"padding_mode={layer.padding_mode!r} is not supported (only 'zeros')"
    if layer.groups != 1:
        return f"grouped Conv2d (groups={layer.groups}) is not supported"
    return None


def gemm_fields(f: Fields) -> tuple[str, tuple[int, int], ConvGeom | None, bool]:
    """The fields every view-GEMM module's config shares (csr, bsr, semi24): ``kind``,
    ``shape`` (R, K), ``conv`` (its geometry, None for a Linear), ``bias``; ``dtype`` one
    of the float names."""
    kind = f.str("kind", ("linear", "conv2d"), optional=True) or \
        ("linear" if f.get("conv", dict, optional=True) is None else "conv2d")
    r, k = f.ints("shape", 2)
    f.str("dtype", ("fp32", "fp16", "bf16"))
    geom = None
    if kind == "conv2d":
        geom = ConvGeom.from_fields(Fields(f.get("conv", dict), f.path, f.layer))
        kh, kw = geom.kernel_size
        if geom.out_channels != r or k % (kh * kw):
            f.fail("shape", f"[{r}, {k}] does not fit the conv geometry {geom.config()}")
    elif f.get("conv", dict, optional=True) is not None:
        f.fail("conv", "a linear layer has no conv geometry")
    return kind, (r, k), geom, f.bool("bias")
