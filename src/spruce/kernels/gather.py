"""Gather the kept columns of a row-major matrix: ``out = x[:, kept]`` in one pass.

The gather before a compacted GEMM (the ``groupwise`` backend's Linear path) is a pure
memory operation: every 32-byte sector of a row that holds a kept feature is read once
and the gathered rows are written contiguously. Each program copies a ``BLOCK_M × BLOCK_K``
tile; loads and stores are flat (``common.gather_flat``), so a warp's lanes run along one
row's consecutive kept columns and its stores are contiguous.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import check_device, gather_flat

BLOCKS = (16, 512, 8)  # BLOCK_M, BLOCK_K, num_warps: best or within 3% on the H100 (gather_probe)


def blocks_for(kc: int) -> tuple[int, int, int]:
    """``BLOCKS``, narrowed for few kept columns so a tile still moves 8192 elements (a
    channel gather of 32 of 64 channels would otherwise leave 15/16 of the lanes idle)."""
    bm, bk, warps = BLOCKS
    if kc >= bk:
        return BLOCKS
    bk = max(16, triton.next_power_of_2(kc))
    return bm * BLOCKS[1] // bk, bk, warps


@triton.jit
def _gather_columns_kernel(x_ptr, kept_ptr, out_ptr, M, KC, stride_xm, stride_om,
                           BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    col_ok = cols < KC
    kidx = tl.load(kept_ptr + cols, mask=col_ok, other=0)
    mask = (rows < M)[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)
    vals = gather_flat(x_ptr, rows64 * stride_xm, kidx, mask, True, BLOCK_M, BLOCK_K)
    out = tl.reshape(out_ptr + (rows64 * stride_om)[:, None] + cols[None, :],
                     (BLOCK_M * BLOCK_K,))
    tl.store(out, vals, mask=tl.reshape(mask, (BLOCK_M * BLOCK_K,)))


def gather_columns(x: torch.Tensor, kept: torch.Tensor, out: torch.Tensor | None = None,
                   blocks: tuple[int, int, int] | None = None) -> torch.Tensor:
    """``x[:, kept]`` for a 2-D ``x`` with unit column stride and int32/int64 ``kept``
    (``blocks``: BLOCK_M, BLOCK_K, num_warps; default ``blocks_for(len(kept))``)."""
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"gather_columns: x must be 2-D with unit column stride; got shape "
                         f"{tuple(x.shape)} strides {x.stride()} (call .contiguous())")
    if kept.dim() != 1 or kept.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"gather_columns: kept must be a 1-D int32/int64 index list; got "
                         f"{kept.dtype} of shape {tuple(kept.shape)}")
    check_device("gather_columns", x, kept)
    m, kc = x.shape[0], kept.numel()
    if out is None:
        out = torch.empty(m, kc, dtype=x.dtype, device=x.device)
    elif out.shape != (m, kc) or out.stride(1) != 1 or out.dtype != x.dtype:
        raise ValueError(f"gather_columns: out must be ({m}, {kc}) {x.dtype} with unit "
                         f"column stride; got {tuple(out.shape)} {out.dtype}")
    bm, bk, warps = blocks or blocks_for(kc)
    if m and kc:
        grid = (triton.cdiv(m, bm), triton.cdiv(kc, bk))
        _gather_columns_kernel[grid](x, kept, out, m, kc, x.stride(0), out.stride(0),
                                     BLOCK_M=bm, BLOCK_K=bk, num_warps=warps)
    return out
