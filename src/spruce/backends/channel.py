"""``channel``: rows pruned whole run as a smaller dense layer, scattered back to full width.

The layer computes only its kept output features/channels; pruned ones output their bias
(zero without a bias), so the rest of the model sees the same shapes. Shrinking the
consumer as well is compaction's job (a later stage).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..fileformat import Fields, check_index
from .base import Backend, StateLayout, masked_weight, register
from .face import DenseFace, rename_legacy
from .im2col import ConvGeom, conv_reason


def kept_rows(weight_view: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    src = mask if mask is not None else weight_view != 0
    return src.any(1).nonzero().flatten().cpu()


class ChannelScatter(DenseFace):
    """Compacted Linear/Conv2d; outputs scattered into a bias-filled full-width tensor.

    ``in_features`` is K of the 2-D view (``C·kh·kw`` for a conv, whose ``in_channels`` is
    ``C``); ``has_bias`` says whether the replaced layer had a bias (``bias`` is then the
    full-width bias, else None)."""

    def __init__(self, weight: torch.Tensor, kept: torch.Tensor, bias: torch.Tensor | None,
                 out_features: int, geom: ConvGeom | None, in_features: int,
                 has_bias: bool | None = None):
        super().__init__()
        self.geom, self.has_bias = geom, bias is not None if has_bias is None else has_bias
        self.dim = 1 if geom is not None else -1
        self.linear_face(in_features, out_features)
        if geom is not None:
            self.conv_face(geom, weight.shape[1])
        full = torch.zeros(out_features, dtype=weight.dtype, device=weight.device)
        if bias is not None:
            full = bias.detach().clone()
        self.register_buffer("kept", kept.to(weight.device))  # (Rc,)
        self.register_buffer("packed", weight.contiguous())  # (Rc, C, kh, kw) or (Rc, K)
        self.register_buffer("kept_bias", full.index_select(0, self.kept))  # (Rc,)
        self.register_buffer("full_bias", full)  # (R,) what pruned outputs hold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.geom is None:
            y = F.linear(x, self.packed, self.kept_bias)  # (..., Rc)
            out = self.full_bias.expand(*y.shape[:-1], self.out_features).clone()
            return out.index_copy_(y.dim() - 1, self.kept, y)
        g = self.geom
        y = F.conv2d(x, self.packed, self.kept_bias, g.stride, g.padding, g.dilation)
        out = self.full_bias[None, :, None, None].expand(
            y.shape[0], self.out_features, *y.shape[2:]).clone()
        return out.index_copy_(1, self.kept, y)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.full_bias if self.has_bias else None

    def dense_weight(self) -> torch.Tensor:  # (R, K) or (O, C, kh, kw)
        out = self.packed.new_zeros(self.out_features, *self.packed.shape[1:])
        return out.index_copy_(0, self.kept, self.packed)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        rename_legacy(state_dict, prefix, {"weight": "packed"})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def config(self) -> dict[str, Any]:
        cfg = {"backend": "channel", "kept": self.kept.numel(), "out_features": self.out_features,
               "in_features": self.in_features, "weight_shape": list(self.packed.shape),
               "bias": self.has_bias}
        if self.geom is None:
            return {**cfg, "kind": "linear"}
        return {**cfg, "kind": "conv2d", **self.geom.config()}


@register("channel")
class Channel(Backend):
    patterns = ("channel", "structured")

    @classmethod
    def reason(cls, layer, mask, dtype, device) -> str | None:
        why = super().reason(layer, mask, dtype, device) or conv_reason(layer)
        if why:
            return why
        w = masked_weight(layer, mask).reshape(layer.weight.shape[0], -1)
        if kept_rows(w, mask).numel() == w.shape[0]:
            return "no all-zero row in the weight view: nothing to compact"
        return None

    @classmethod
    def from_masked(cls, layer: nn.Module, mask: torch.Tensor | None) -> nn.Module:
        w = masked_weight(layer, mask)  # layer shape
        kept = kept_rows(w.reshape(w.shape[0], -1), mask)
        if kept.numel() == 0:  # every row pruned: one zero row keeps the shapes valid
            kept = torch.zeros(1, dtype=torch.long)
        compact = w.index_select(0, kept.to(w.device))
        geom = ConvGeom.of(layer) if isinstance(layer, nn.Conv2d) else None
        return ChannelScatter(compact, kept, layer.bias, w.shape[0], geom,
                              layer.weight[0].numel())

    @classmethod
    def layout(cls, config, path=None, layer=None) -> StateLayout:
        f = Fields(config, path, layer, what="a channel layer")
        kind = f.str("kind", ("linear", "conv2d"))
        r, k = f.int("out_features"), f.int("in_features")
        kept = f.int("kept", 1, r)
        geom = None
        if kind == "linear":
            shape = f.ints("weight_shape", 2)
            ok = shape == (kept, k)
        else:
            geom = ConvGeom.from_fields(f)
            shape = f.ints("weight_shape", 4)
            ok = shape[0] == kept and shape[2:] == geom.kernel_size and \
                shape[1] * shape[2] * shape[3] == k and geom.out_channels == r
        if not ok:
            f.fail("weight_shape", f"{list(shape)} does not fit kept={kept}, "
                   f"in_features={k}, out_features={r}")
        tensors = {"kept": ((kept,), torch.int64), "packed": (shape, None),
                   "kept_bias": ((kept,), None), "full_bias": ((r,), None)}
        return StateLayout((r, k), kind, None if geom is None else geom.config(), tensors)

    @classmethod
    def check_state(cls, module: nn.Module) -> tuple[str, str] | None:
        why = check_index(module.kept, module.out_features, "kept")
        if why is None and not torch.equal(module.kept_bias,
                                           module.full_bias.index_select(0, module.kept)):
            why = "kept_bias is not full_bias at the kept rows"
        return None if why is None else ("kept", why)

    @classmethod
    def empty(cls, config: dict[str, Any]) -> nn.Module:
        cls.layout(config)
        geom = ConvGeom.from_config(config) if config["kind"] == "conv2d" else None
        return ChannelScatter(torch.zeros(config["weight_shape"]),
                              torch.zeros(config["kept"], dtype=torch.long), None,
                              config["out_features"], geom, config["in_features"],
                              has_bias=config.get("bias", True))
