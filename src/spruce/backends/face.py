"""What code around a layer reads of it, kept on the module that replaces it.

Models do not only call their layers: HF ViT reads ``projection.weight.dtype``, T5
``wo.weight.dtype``, ``nn.MultiheadAttention`` passes ``out_proj.weight``/``bias`` to a
functional. A backend module therefore exposes, besides its packed buffers:

- ``weight``: a read-only tensor equal to the dense masked weight in the replaced layer's
  shape, dtype and device. It is built from the packed buffers on first access and cached
  as a plain attribute (never saved, dropped on ``.to()``/``.half()`` and on
  ``load_state_dict``), so a model that reads it every forward pays once;
- ``bias`` (or None), and the sizes: ``in_features``/``out_features`` for a Linear;
  ``in_channels``/``out_channels``/``kernel_size``/``stride``/``padding``/``dilation``/
  ``groups``/``padding_mode`` for a Conv2d.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .im2col import ConvGeom

_CACHE = "_dense_weight_cache"


def _drop_cache(module: nn.Module, *_: Any) -> None:
    module.__dict__.pop(_CACHE, None)


class DenseFace(nn.Module):
    """Base of backend modules: ``weight`` (dense-equivalent, cached) and the layer sizes.

    Subclasses implement ``dense_weight()`` and call ``linear_face`` or ``conv_face``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_load_state_dict_post_hook(_drop_cache)

    def dense_weight(self) -> torch.Tensor:
        """The dense masked weight in the replaced layer's shape (built from the buffers)."""
        raise NotImplementedError

    @property
    def weight(self) -> torch.Tensor:
        w = self.__dict__.get(_CACHE)
        if w is None:
            with torch.no_grad():
                w = self.dense_weight().detach()
            self.__dict__[_CACHE] = w
        return w

    def _apply(self, fn, recurse=True):
        _drop_cache(self)
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {k: v for k, v in state.items() if k != _CACHE}

    def linear_face(self, in_features: int, out_features: int) -> None:
        self.in_features, self.out_features = int(in_features), int(out_features)

    def conv_face(self, geom: ConvGeom, in_channels: int) -> None:
        self.in_channels, self.out_channels = int(in_channels), geom.out_channels
        self.kernel_size, self.stride = geom.kernel_size, geom.stride
        self.padding, self.dilation = geom.padding, geom.dilation
        self.groups, self.padding_mode = 1, "zeros"


def scatter_columns(packed: torch.Tensor, kept: torch.Tensor, k: int) -> torch.Tensor:
    """``[R, Kc]`` packed columns → ``[R, K]`` with zeros in the columns not kept."""
    out = packed.new_zeros(packed.shape[0], k)
    return out.index_copy_(1, kept.to(packed.device), packed)


def rename_legacy(state_dict: dict[str, Any], prefix: str, renames: dict[str, str]) -> None:
    """Files saved before the packed weight was renamed: ``prefix+old`` → ``prefix+new``."""
    for old, new in renames.items():
        if prefix + old in state_dict and prefix + new not in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)
