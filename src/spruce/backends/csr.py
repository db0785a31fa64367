"""``csr``: the masked weight view as a ``torch.sparse_csr`` matrix; ``y = W @ x`` through
MKL (CPU) or cuSPARSE (CUDA). Serves every pattern; mostly a baseline, since it is slower
than dense at the densities pruning reaches (DESIGN.md, "numbers to beat").

What was run, not guessed (torch 2.13 CPU here; torch 2.11+cu130 on an H200):
- CPU: fp32 only. fp16/bf16 raise ``"addmm_out_sparse_csr_impl_mkl" not implemented``.
- CUDA: fp32, fp16, bf16, int32 or int64 indices; an all-zero matrix (nnz 0) works.
  cuSPARSE's SpMM is not bitwise reproducible from run to run (1-ulp differences). fp16,
  3072×768 weight at density 0.5, 2048 rows: 0.86 ms against 0.017 ms dense.
- Formulation: ``addmm(bias[:, None], W_csr, xT)`` with ``xT = x2d.T.contiguous()``, the
  sparse operand first. ``F.linear(x, W_csr)`` (dense @ sparseᵀ) was ~4x slower on CPU and
  ~12x on CUDA; a non-contiguous ``xT`` was ~11x slower on cuSPARSE and no faster on MKL.
- A conv runs as one GEMM per sample on CPU (each ``cols[b]`` is already ``[K, L]`` row-major;
  measured no slower than one batched GEMM, which needs two batch transposes) and as one
  GEMM over the whole batch on CUDA (one cuSPARSE call instead of B).

Saved state: ``crow_indices``, ``col_indices``, ``values`` (and ``bias``) are dense buffers,
so ``state_dict()`` goes to safetensors; the sparse tensor ``w`` is a plain attribute,
rebuilt from them after ``.to()``/``.half()`` (``_apply``) and after ``load_state_dict``.
``SparseGemm`` here is shared with ``bsr``.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import SpruceError
from ..fileformat import INDEX_DTYPES, Fields, check_csr
from ..view import to_view, view_shape
from .base import FLOATS, Backend, StateLayout, dtype_name, register
from .face import DenseFace
from .im2col import ConvGeom, conv_reason, gemm_fields

DTYPES_BY_DEVICE = {"cpu": (torch.float32,), "cuda": FLOATS}  # what torch's CSR/BSR mm runs
_DTYPES = {dtype_name(d): d for d in (*FLOATS, torch.float64)}


def dtype_of(name: str) -> torch.dtype:
    """``"fp16"`` (a config's dtype) → ``torch.float16``; also takes ``"int32"``-style names."""
    return _DTYPES[name] if name in _DTYPES else getattr(torch, name)


def device_dtype_reason(backend: str, dtype: torch.dtype, device: torch.device | str) -> str | None:
    """Why torch's CSR/BSR matmul does not run ``dtype`` on ``device``, or None."""
    kind = torch.device(device).type
    ok = DTYPES_BY_DEVICE.get(kind, ())
    if dtype not in ok:
        return (f"{backend} on {kind} supports {', '.join(dtype_name(d) for d in ok)} only, not "
                f"{dtype_name(dtype)} (torch's sparse matmul lacks it); convert the layer to "
                f"{dtype_name(ok[0])} or use the dense backend")
    return None


def mask_shape_reason(layer: nn.Module, mask: torch.Tensor | None) -> str | None:
    if mask is not None and tuple(mask.shape) != view_shape(layer):
        return (f"mask shape {tuple(mask.shape)} does not match the weight view "
                f"{view_shape(layer)}; build the mask on the layer's 2-D view")
    return None


def compress_rows(keep: torch.Tensor, index_dtype: torch.dtype
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool ``[R, K]`` → CSR ``(crow_indices [R+1], col_indices [nnz])`` of its True entries,
    row-major (the order ``tensor[keep]`` reads values in)."""
    crow = torch.zeros(keep.shape[0] + 1, dtype=torch.int64, device=keep.device)
    crow[1:] = keep.sum(1).cumsum(0)
    col = keep.nonzero()[:, 1]
    return crow.to(index_dtype).contiguous(), col.to(index_dtype).contiguous()


def index_dtype_for(n: int) -> torch.dtype:
    return torch.int32 if n < 2**31 - 1 else torch.int64


def _rebuild_after_load(module: nn.Module, _incompatible_keys: Any) -> None:
    module._rebuild()  # a module-level function, so the module still pickles


class DerivedOperand(nn.Module):
    """A module whose matmul operand ``self.w`` (a sparse or semi-structured tensor: neither
    saveable nor deep-copyable) is derived from its plain buffers by ``_rebuild()`` — at
    construction (subclasses call it), after ``.to()``/``.half()``, copy/pickle and
    ``load_state_dict``. Never in ``forward``."""

    def __init__(self):
        super().__init__()
        self.register_load_state_dict_post_hook(_rebuild_after_load)

    def _rebuild(self) -> None:
        raise NotImplementedError

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._rebuild()
        return self

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "w"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._rebuild()


class SparseGemm(DenseFace, DerivedOperand):
    """``y = W_sparse @ x`` over the 2-D view ``[R, K]``, for a Linear or (im2col) Conv2d.

    Subclasses register their dense buffers, then call ``_rebuild()``; ``_build()`` makes the
    torch sparse tensor from the buffers. A dtype/device change torch's sparse matmul does
    not run there (``.half()`` on the CPU) is refused before anything is converted.
    """

    backend: ClassVar[str] = "?"

    def __init__(self, shape: tuple[int, int], geom: ConvGeom | None, bias: torch.Tensor | None):
        super().__init__()
        self.shape = (int(shape[0]), int(shape[1]))  # (R, K) of the view
        self.geom = geom  # None: a Linear
        if geom is None:
            self.linear_face(self.shape[1], self.shape[0])
        else:
            self.conv_face(geom, self.shape[1] // (geom.kernel_size[0] * geom.kernel_size[1]))
        self.register_buffer("bias", None if bias is None else bias.detach().clone().contiguous())

    def dense_weight(self) -> torch.Tensor:  # (R, K) or (O, C, kh, kw)
        w = self.w.to_dense()
        return w if self.geom is None else w.reshape(self.out_channels, self.in_channels,
                                                     *self.geom.kernel_size)

    def _apply(self, fn, recurse=True):
        values = getattr(self, "values", None)
        if values is not None:
            to = fn(values[:0])
            why = device_dtype_reason(self.backend, to.dtype, to.device)
            if why and to.dtype != torch.float64:  # fp64 runs too (MKL and cuSPARSE)
                raise SpruceError(f"cannot move a {self.backend} layer (weight view "
                                  f"{self.shape[0]}x{self.shape[1]}) to {dtype_name(to.dtype)} "
                                  f"on {to.device.type}: {why}")
        return super()._apply(fn, recurse)

    def _build(self) -> torch.Tensor:
        raise NotImplementedError

    def _rebuild(self) -> None:
        self.w = self._build()
        self.per_sample = self.w.device.type == "cpu"  # conv: a GEMM per sample (see docstring)

    def config(self) -> dict[str, Any]:
        return {"backend": self.backend, "kind": "linear" if self.geom is None else "conv2d",
                "shape": list(self.shape), "bias": self.bias is not None,
                "dtype": dtype_name(self.w.dtype),
                "conv": None if self.geom is None else self.geom.config()}

    def _mm(self, xt: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``xt [K, N]`` row-major → ``[R, N]`` (+ bias)."""
        if self.bias is None:
            return torch.mm(self.w, xt, out=out)
        return torch.addmm(self.bias.unsqueeze(1), self.w, xt, out=out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            raise SpruceError(f"a {self.backend} layer (weight view {self.shape[0]}x"
                              f"{self.shape[1]}) cannot be traced or exported: torch's sparse "
                              f"tensors do not trace; convert with backend 'dense', "
                              f"'groupwise' or 'channel' to export")
        r, k = self.shape
        if self.geom is None:
            y = self._mm(x.reshape(-1, k).t().contiguous())  # (R, N)
            return y.t().contiguous().view(*x.shape[:-1], r)
        cols = self.geom.unfold(x)  # (B, K, L)
        b, _, n_l = cols.shape
        if self.per_sample:
            y = cols.new_empty(b, r, n_l)
            for i in range(b):
                self._mm(cols[i], out=y[i])
        else:
            y = self._mm(cols.transpose(0, 1).reshape(k, b * n_l))  # (R, B·L)
            y = y.view(r, b, n_l).transpose(0, 1)
        return self.geom.fold(y, x.shape)  # (B, R, Ho, Wo)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, conv={self.geom is not None}, bias={self.bias is not None}"


class CsrGemm(SparseGemm):
    backend = "csr"

    def __init__(self, shape, geom, bias, crow: torch.Tensor, col: torch.Tensor,
                 values: torch.Tensor):
        super().__init__(shape, geom, bias)
        self.register_buffer("crow_indices", crow)  # (R+1,)
        self.register_buffer("col_indices", col)  # (nnz,)
        self.register_buffer("values", values)  # (nnz,)
        self._rebuild()

    def _build(self) -> torch.Tensor:
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.crow_indices, self.col_indices, self.values,
                                           self.shape, check_invariants=False)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "nnz": int(self.values.numel()),
                "index_dtype": str(self.col_indices.dtype).removeprefix("torch.")}


def geom_of(layer: nn.Module) -> ConvGeom | None:
    return ConvGeom.of(layer) if isinstance(layer, nn.Conv2d) else None


def check_build(backend: type[Backend], layer: nn.Module, mask: torch.Tensor | None) -> None:
    """The preconditions of ``from_masked``: ``reason`` must be None for the layer as it is."""
    if not isinstance(layer, (nn.Linear, nn.Conv2d)):
        raise TypeError(f"{backend.name}: expected nn.Linear or nn.Conv2d, "
                        f"got {type(layer).__name__}")
    why = backend.reason(layer, mask, layer.weight.dtype, layer.weight.device)
    if why:
        raise ValueError(f"{backend.name} cannot serve {type(layer).__name__} with weight "
                         f"{tuple(layer.weight.shape)}: {why}")


@register("csr")
class Csr(Backend):
    """Any mask as CSR; CPU fp32, CUDA fp32/fp16/bf16 (see the module docstring)."""

    not_exportable = "torch's sparse CSR tensors do not trace"
    graph_break = "torch.compile cannot trace torch's sparse CSR tensors"

    @classmethod
    def dtypes_on(cls, device_type: str) -> tuple[torch.dtype, ...]:
        return DTYPES_BY_DEVICE.get(device_type, ())

    @classmethod
    def reason(cls, layer, mask, dtype, device) -> str | None:
        device = torch.device(device)
        return (super().reason(layer, mask, dtype, device) or conv_reason(layer)
                or mask_shape_reason(layer, mask) or device_dtype_reason(cls.name, dtype, device))

    @classmethod
    def from_masked(cls, layer: nn.Module, mask: torch.Tensor | None) -> nn.Module:
        check_build(cls, layer, mask)
        w = to_view(layer.weight.detach())  # (R, K)
        keep = (torch.ones_like(w, dtype=torch.bool) if mask is None
                else mask.to(device=w.device, dtype=torch.bool))
        crow, col = compress_rows(keep, index_dtype_for(w.numel()))
        values = w[keep].contiguous()  # kept entries, row-major; a kept 0.0 stays stored
        return CsrGemm(tuple(w.shape), geom_of(layer), layer.bias, crow, col, values)

    @classmethod
    def layout(cls, config, path=None, layer=None) -> StateLayout:
        f = Fields(config, path, layer, what="a csr layer")
        kind, (r, k), geom, bias = gemm_fields(f)
        idx = INDEX_DTYPES[f.str("index_dtype", tuple(INDEX_DTYPES))]
        nnz = f.int("nnz", 0, r * k)
        tensors = {"crow_indices": ((r + 1,), idx), "col_indices": ((nnz,), idx),
                   "values": ((nnz,), None), **({"bias": ((r,), None)} if bias else {})}
        return StateLayout((r, k), kind, None if geom is None else geom.config(), tensors)

    @classmethod
    def check_state(cls, module: nn.Module) -> tuple[str, str] | None:
        why = check_csr(module.crow_indices, module.col_indices, *module.shape)
        return None if why is None else ("crow_indices/col_indices", why)

    @classmethod
    def empty(cls, config: dict[str, Any]) -> nn.Module:
        cls.layout(config)
        r, k = config["shape"]
        idx, dt = dtype_of(config["index_dtype"]), dtype_of(config["dtype"])
        geom = None if config.get("conv") is None else ConvGeom.from_config(config["conv"])
        bias = torch.zeros(r, dtype=dt) if config["bias"] else None
        return CsrGemm((r, k), geom, bias, torch.zeros(r + 1, dtype=idx),
                       torch.zeros(config["nnz"], dtype=idx), torch.zeros(config["nnz"], dtype=dt))
