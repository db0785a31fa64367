"""``semi24``: 2:4 weights on sparse tensor cores via ``torch.sparse.to_sparse_semi_structured``.

What was run, not guessed (torch 2.11+cu130 on an H200, sm90):
- cuSPARSELt (torch's default subclass): fp16 and bf16 build and multiply; fp32 is refused
  at build ("not a supported dtype"). A run of 4 keeping fewer than 2 works (zeros stored).
- The CUTLASS subclass (``SparseSemiStructuredTensor._FORCE_CUTLASS = True``) builds but
  every matmul raises "Supported only on GPUs with compute capability 8.x" on sm90; it is
  only usable on sm8x.
- Shape limits come from the subclass's ``_DTYPE_SHAPE_CONSTRAINTS`` (``sparse_min_rows``,
  ``sparse_min_cols``): both view dims must be positive multiples (cuSPARSELt fp16/bf16:
  16×16; CUTLASS fp16/bf16: 32×64). The dense input's row count N need not be: the subclass
  pads it to a multiple of ``dense_min_rows`` (8) inside each call (an ``F.pad`` copy) and
  slices the result — avoid it by feeding N % 8 == 0 (batch·tokens, or B·Ho·Wo for a conv).
- ``F.linear(x, W24, b)`` returns ``[N, R]`` column-major (strides ``(1, N)``), and the
  Linear module returns it as is: at 8192³ fp16 it took 1.12 ms against dense
  1.42 ms, and 1.56 ms with a ``.contiguous()`` after it. ``reshape`` and most ``view``s work
  on it. Building with ``_FUSE_TRANSPOSE`` gives row-major output but took 123 ms (torch 2.11).

Saved state: the dense masked weight ``masked [R, K]`` and ``bias`` (semi-structured tensors
cannot be saved); the 2:4 tensor ``w`` is built from them at construction, after
``.to()``/``.half()`` and after ``load_state_dict``, and only on CUDA in fp16/bf16.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..fileformat import Fields
from ..view import to_view, view_shape
from .base import Backend, StateLayout, dtype_name, register
from .csr import DerivedOperand, check_build, dtype_of, geom_of, mask_shape_reason
from .face import DenseFace, rename_legacy
from .im2col import ConvGeom, conv_reason, gemm_fields


def _subclass() -> type:
    """The subclass ``to_sparse_semi_structured`` will build (its own rule)."""
    sst = torch.sparse.SparseSemiStructuredTensor
    return (torch.sparse.SparseSemiStructuredTensorCUTLASS if sst._FORCE_CUTLASS
            else torch.sparse.SparseSemiStructuredTensorCUSPARSELT)


def not_24(mask: torch.Tensor | None) -> str | None:
    """Why the 2-D ``mask`` is not 2:4 along K (each aligned run of 4 keeps <= 2), or None."""
    if mask is None:
        return "mask is None (all kept), not 2:4; prune with pattern '2:4' first"
    r, k = mask.shape
    if k % 4:
        return f"K={k} is not a multiple of 4, so the view has no whole runs of 4 for 2:4"
    counts = mask.to(torch.bool).reshape(r, k // 4, 4).sum(-1)
    worst = int(counts.max())
    if worst > 2:
        row, run = divmod(int(counts.argmax()), k // 4)
        return (f"mask is not 2:4: a run of 4 keeps {worst} entries (row {row}, columns "
                f"{4 * run}..{4 * run + 3}); prune with pattern '2:4'")
    return None


def shape_reason(shape: tuple[int, int], dtype: torch.dtype) -> str | None:
    """Why a ``[R, K]`` weight in ``dtype`` breaks the subclass's shape constraints, or None."""
    sub = _subclass()
    if dtype not in sub._DTYPE_SHAPE_CONSTRAINTS:
        return f"{sub.__name__} does not support {dtype_name(dtype)}"
    c = sub._DTYPE_SHAPE_CONSTRAINTS[dtype]
    r, k = shape
    if r < c.sparse_min_rows or r % c.sparse_min_rows or k < c.sparse_min_cols \
            or k % c.sparse_min_cols:
        return (f"weight view {r}x{k} is not a positive multiple of {c.sparse_min_rows}x"
                f"{c.sparse_min_cols}, which {sub.__name__} needs for {dtype_name(dtype)}; "
                f"exclude this layer or pad its features")
    return None


class Semi24Gemm(DenseFace, DerivedOperand):
    """``y = x @ W24ᵀ + b`` (Linear) or im2col + the same GEMM (Conv2d) on CUDA."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, geom: ConvGeom | None):
        super().__init__()
        self.geom = geom  # None: a Linear
        r, k = weight.shape
        if geom is None:
            self.linear_face(k, r)
        else:
            self.conv_face(geom, k // (geom.kernel_size[0] * geom.kernel_size[1]))
        self.register_buffer("masked", weight.detach().clone().contiguous())  # (R, K), masked
        self.register_buffer("bias", None if bias is None else bias.detach().clone().contiguous())
        self._rebuild()

    def dense_weight(self) -> torch.Tensor:  # a view of ``masked`` in the layer's shape
        if self.geom is None:
            return self.masked
        return self.masked.view(self.out_channels, self.in_channels, *self.kernel_size)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        rename_legacy(state_dict, prefix, {"weight": "masked"})  # files saved before
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _rebuild(self) -> None:
        w = self.masked
        on_gpu = w.is_cuda and w.dtype in Semi24.dtypes
        self.w = torch.sparse.to_sparse_semi_structured(w) if on_gpu else None  # else: later

    def config(self) -> dict[str, Any]:
        return {"backend": "semi24", "kind": "linear" if self.geom is None else "conv2d",
                "shape": list(self.masked.shape), "bias": self.bias is not None,
                "dtype": dtype_name(self.masked.dtype),
                "conv": None if self.geom is None else self.geom.config()}

    def _linear(self, x2: torch.Tensor) -> torch.Tensor:  # (N, K) → (N, R)
        if self.w is None:
            raise RuntimeError("semi24: the 2:4 weight exists on CUDA in fp16/bf16 only; move "
                               "the module with .to('cuda', torch.float16)")
        return F.linear(x2, self.w, self.bias)  # column-major [N, R]: see the docstring

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, k = self.masked.shape
        if self.geom is None:
            return self._linear(x.reshape(-1, k)).reshape(*x.shape[:-1], r)  # a view
        cols = self.geom.unfold(x)  # (B, K, L)
        b, _, n_l = cols.shape
        y = self._linear(cols.transpose(1, 2).reshape(b * n_l, k))  # (B·L, R)
        return self.geom.fold(y.view(b, n_l, r).transpose(1, 2), x.shape)  # (B, R, Ho, Wo)


@register("semi24")
class Semi24(Backend):
    """2:4 masks on sparse tensor cores: CUDA sm80+, fp16/bf16 (see the module docstring)."""

    patterns = ("vector",)
    not_exportable = "semi-structured (2:4) sparse tensors have no ONNX form"
    dtypes = (torch.float16, torch.bfloat16)
    devices = ("cuda",)

    @classmethod
    def unavailable(cls) -> str | None:
        if not torch.cuda.is_available():
            return ("semi24 needs a CUDA GPU with compute capability >= 8.0 (sm80+); this "
                    "machine has no CUDA")
        major, minor = torch.cuda.get_device_capability()
        if major < 8:
            return (f"semi24 needs a CUDA GPU with compute capability >= 8.0 (sm80+); this "
                    f"GPU is sm{major}{minor}")
        if _subclass() is torch.sparse.SparseSemiStructuredTensorCUTLASS and major != 8:
            return (f"semi24 with _FORCE_CUTLASS runs on sm8x only (this GPU is sm{major}{minor});"
                    f" unset SparseSemiStructuredTensor._FORCE_CUTLASS to use cuSPARSELt")
        if (_subclass() is torch.sparse.SparseSemiStructuredTensorCUSPARSELT
                and not torch.backends.cusparselt.is_available()):
            return "semi24: this torch build has no cuSPARSELt; install a CUDA build that has it"
        return None

    @classmethod
    def reason(cls, layer, mask, dtype, device) -> str | None:
        device = torch.device(device)
        return (super().reason(layer, mask, dtype, device) or conv_reason(layer)
                or mask_shape_reason(layer, mask) or not_24(mask)
                or shape_reason(view_shape(layer), dtype))

    @classmethod
    def from_masked(cls, layer: nn.Module, mask: torch.Tensor | None) -> nn.Module:
        check_build(cls, layer, mask)
        w = to_view(layer.weight.detach())  # (R, K)
        w = w * mask.to(device=w.device, dtype=w.dtype)  # zeros are stored explicitly in 2:4
        return Semi24Gemm(w, layer.bias, geom_of(layer))

    @classmethod
    def layout(cls, config, path=None, layer=None) -> StateLayout:
        f = Fields(config, path, layer, what="a semi24 layer")
        kind, (r, k), geom, bias = gemm_fields(f)
        tensors = {"masked": ((r, k), None), **({"bias": ((r,), None)} if bias else {})}
        return StateLayout((r, k), kind, None if geom is None else geom.config(), tensors)

    @classmethod
    def check_state(cls, module: nn.Module) -> tuple[str, str] | None:
        why = not_24(module.masked != 0)
        return None if why is None else ("masked", why)

    @classmethod
    def empty(cls, config: dict[str, Any]) -> nn.Module:
        cls.layout(config)
        r, k = config["shape"]
        dt = dtype_of(config["dtype"])
        geom = None if config.get("conv") is None else ConvGeom.from_config(config["conv"])
        bias = torch.zeros(r, dtype=dt) if config["bias"] else None
        return Semi24Gemm(torch.zeros(r, k, dtype=dt), bias, geom)
