"""``bsr``: a block-pruned weight view as a ``torch.sparse_bsr`` matrix of ``s × s`` blocks.

What was run, not guessed (torch 2.13 CPU here; torch 2.11+cu130 on an H200):
- Blocks must be SQUARE on both devices: MKL raises "MKL Sparse doesn't support matrices
  with non-square blocks"; CUDA fails an internal assert (``values.size(2) == size(1)``,
  SparseBlasImpl.cpp). 1×1 blocks also fail on CUDA. So the block side ``s`` is >= 2.
- CPU: fp32 only (fp16/bf16: ``addmm_out_sparse_csr_impl_mkl`` not implemented).
  CUDA: fp32, fp16, bf16 (sides 2, 8, 16, 32, 64 run; checked against a dense reference).
- A ``bo × bk`` block mask is also uniform on ``g × g`` tiles for any ``g`` dividing both
  sides, so a 2×4 block mask runs here as 2×2 blocks. ``infer_block`` picks the largest
  square side from ``BLOCK_SIDES`` that divides R and K and on which the mask is uniform.

The matmul and conv-as-GEMM are ``csr.SparseGemm``'s: ``addmm(bias[:, None], W_bsr, xT)``.
Saved state: ``crow_indices``, ``col_indices`` (block rows/cols), ``values [nnzb, s, s]``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..fileformat import INDEX_DTYPES, Fields, check_csr
from ..view import to_view, view_shape
from .base import Backend, StateLayout, register
from .csr import (
    DTYPES_BY_DEVICE,
    SparseGemm,
    check_build,
    compress_rows,
    device_dtype_reason,
    dtype_of,
    geom_of,
    index_dtype_for,
    mask_shape_reason,
)
from .im2col import ConvGeom, conv_reason, gemm_fields

BLOCK_SIDES = (64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2)  # powers of two and the common 3·2^k


def _uniform(keep: torch.Tensor, side: int, dim: int) -> bool:
    """Is ``keep`` constant over every run of ``side`` entries along ``dim`` (runs aligned)?"""
    r, k = keep.shape
    runs = keep.reshape(r // side, side, k) if dim == 0 else keep.reshape(r, k // side, side)
    d = 1 if dim == 0 else 2
    return bool(torch.equal(runs.all(d), runs.any(d)))


def _largest_side(keep: torch.Tensor, dim: int) -> int:
    n = keep.shape[dim]
    return max((s for s in BLOCK_SIDES if n % s == 0 and _uniform(keep, s, dim)), default=1)


def infer_block(mask: torch.Tensor | None, shape: tuple[int, int] | None = None) -> tuple[int, int]:
    """The largest square block ``(s, s)``, ``s`` in ``BLOCK_SIDES``, dividing the view and on
    whose tiles ``mask`` is all-kept or all-dropped; ``(1, 1)`` if none.

    Tiles are uniform iff every aligned run of ``s`` rows and of ``s`` columns is, so the two
    axes are checked apart.
    """
    if mask is None:
        r, k = shape
        return next(((s, s) for s in BLOCK_SIDES if r % s == 0 and k % s == 0), (1, 1))
    keep = mask.to(torch.bool)
    r, k = keep.shape
    for s in BLOCK_SIDES:
        if r % s == 0 and k % s == 0 and _uniform(keep, s, 0) and _uniform(keep, s, 1):
            return s, s
    return 1, 1


def block_reason(mask: torch.Tensor | None, shape: tuple[int, int],
                 blocksize: tuple[int, int] | None = None) -> str | None:
    """Why ``mask`` over a view of ``shape`` cannot run as square BSR blocks, or None."""
    r, k = shape
    if blocksize is not None:
        bo, bk = (int(b) for b in blocksize)
        if bo != bk or bo < 2:
            return (f"blocksize {bo}x{bk}: torch's BSR matmul needs square blocks of side >= 2 "
                    f"(CPU and CUDA); pass blocksize=None to infer one")
        if r % bo or k % bo:
            return f"blocksize {bo}x{bo} does not divide the weight view {r}x{k}"
        keep = None if mask is None else mask.to(torch.bool)
        if keep is not None and not (_uniform(keep, bo, 0) and _uniform(keep, bo, 1)):
            return f"mask is not uniform on {bo}x{bo} tiles (some tile is partly kept)"
        return None
    if infer_block(mask, shape)[0] > 1:
        return None
    why = f"mask has no square block structure that divides {r}x{k}"
    if mask is not None:
        keep = mask.to(torch.bool)
        bo, bk = _largest_side(keep, 0), _largest_side(keep, 1)
        if bo * bk > 1:
            why += (f" (its largest uniform tile is {bo}x{bk}; torch's BSR matmul needs square "
                    f"blocks of side >= 2)")
    return why + "; use the csr backend or prune with pattern 'block' and a square block"


class BsrGemm(SparseGemm):
    backend = "bsr"

    def __init__(self, shape, geom, bias, crow: torch.Tensor, col: torch.Tensor,
                 values: torch.Tensor):
        super().__init__(shape, geom, bias)
        self.register_buffer("crow_indices", crow)  # (R/s + 1,)
        self.register_buffer("col_indices", col)  # (nnzb,)
        self.register_buffer("values", values)  # (nnzb, s, s)
        self._rebuild()

    def _build(self) -> torch.Tensor:
        with warnings.catch_warnings():  # "Sparse BSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_bsr_tensor(self.crow_indices, self.col_indices, self.values,
                                           self.shape, check_invariants=False)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "blocksize": list(self.values.shape[1:]),
                "nnz_blocks": int(self.values.shape[0]),
                "index_dtype": str(self.col_indices.dtype).removeprefix("torch.")}


@register("bsr")
class Bsr(Backend):
    """Square-block masks as BSR; CPU fp32, CUDA fp32/fp16/bf16 (see the module docstring)."""

    patterns = ("block",)
    not_exportable = "torch's sparse BSR tensors do not trace"
    graph_break = "torch.compile cannot trace torch's sparse BSR tensors"

    @classmethod
    def dtypes_on(cls, device_type: str) -> tuple[torch.dtype, ...]:
        return DTYPES_BY_DEVICE.get(device_type, ())

    @classmethod
    def reason(cls, layer, mask, dtype, device, blocksize=None) -> str | None:
        device = torch.device(device)
        return (super().reason(layer, mask, dtype, device) or conv_reason(layer)
                or mask_shape_reason(layer, mask) or device_dtype_reason(cls.name, dtype, device)
                or block_reason(mask, view_shape(layer), blocksize))

    @classmethod
    def from_masked(cls, layer: nn.Module, mask: torch.Tensor | None,
                    blocksize: tuple[int, int] | None = None) -> nn.Module:
        check_build(cls, layer, mask)
        w = to_view(layer.weight.detach())  # (R, K)
        why = block_reason(mask, tuple(w.shape), blocksize)
        if why:
            raise ValueError(f"bsr: {why}")
        s = int(blocksize[0]) if blocksize is not None else infer_block(mask, tuple(w.shape))[0]
        r, k = w.shape
        tiles = w.reshape(r // s, s, k // s, s).transpose(1, 2)  # (R/s, K/s, s, s)
        keep = (torch.ones(r // s, k // s, dtype=torch.bool, device=w.device) if mask is None
                else mask.to(device=w.device, dtype=torch.bool)
                .reshape(r // s, s, k // s, s).any(3).any(1))  # (R/s, K/s)
        crow, col = compress_rows(keep, index_dtype_for(keep.numel()))
        values = tiles[keep].contiguous()  # (nnzb, s, s); a kept all-zero tile stays stored
        return BsrGemm((r, k), geom_of(layer), layer.bias, crow, col, values)

    @classmethod
    def layout(cls, config, path=None, layer=None) -> StateLayout:
        f = Fields(config, path, layer, what="a bsr layer")
        kind, (r, k), geom, bias = gemm_fields(f)
        idx = INDEX_DTYPES[f.str("index_dtype", tuple(INDEX_DTYPES))]
        bo, bk = f.ints("blocksize", 2, lo=2)
        if bo != bk or r % bo or k % bo:
            f.fail("blocksize", f"{bo}x{bk} must be square and divide the view {r}x{k}")
        n = f.int("nnz_blocks", 0, (r // bo) * (k // bo))
        tensors = {"crow_indices": ((r // bo + 1,), idx), "col_indices": ((n,), idx),
                   "values": ((n, bo, bo), None), **({"bias": ((r,), None)} if bias else {})}
        return StateLayout((r, k), kind, None if geom is None else geom.config(), tensors)

    @classmethod
    def check_state(cls, module: nn.Module) -> tuple[str, str] | None:
        s = module.values.shape[1]
        why = check_csr(module.crow_indices, module.col_indices, module.shape[0] // s,
                        module.shape[1] // s)
        return None if why is None else ("crow_indices/col_indices", why)

    @classmethod
    def empty(cls, config: dict[str, Any]) -> nn.Module:
        cls.layout(config)
        r, k = config["shape"]
        bo, bk = config["blocksize"]
        idx, dt = dtype_of(config["index_dtype"]), dtype_of(config["dtype"])
        geom = None if config.get("conv") is None else ConvGeom.from_config(config["conv"])
        bias = torch.zeros(r, dtype=dt) if config["bias"] else None
        n = config["nnz_blocks"]
        return BsrGemm((r, k), geom, bias, torch.zeros(r // bo + 1, dtype=idx),
                       torch.zeros(n, dtype=idx), torch.zeros(n, bo, bk, dtype=dt))
