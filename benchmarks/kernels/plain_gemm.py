"""A plain Triton GEMM with the fused linear's tiles and no gather — a diagnostic floor
for ``bench_fused.py`` (how close Triton gets to cuBLAS before any gather cost)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from spruce.kernels import groupwise_linear as gl
from spruce.kernels.common import target, tile_ids


@triton.jit
def plain_gemm_kernel(x_ptr, w_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      GROUP_M: tl.constexpr, PREFETCH: tl.constexpr, PAIRS: tl.constexpr):
    """``x @ w.T`` with contiguous K loads: the fused kernel minus its gather (diagnostic;
    PREFETCH and PAIRS are accepted and ignored)."""
    pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + (offs_m % M)[:, None] * stride_xm + offs_k[None, :]
    w_ptrs = w_ptr + (offs_n % N)[None, :] * stride_wn + offs_k[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, K, BLOCK_K):
        acc = tl.dot(tl.load(x_ptrs), tl.load(w_ptrs), acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


_PLAIN = {}


def plain_configs() -> list:
    return [c for c in gl.configs(target()) if not (c.kwargs["PREFETCH"] or c.kwargs["PAIRS"])]


def plain_gemm(g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """g (M, Kp) @ w (N, Kp).T, autotuned over the fused linear's tiles."""
    if "k" not in _PLAIN:
        _PLAIN["k"] = triton.autotune(configs=plain_configs(), key=["M", "N", "K"],
                                      prune_configs_by={"early_config_prune": gl.prune_configs}
                                      )(plain_gemm_kernel)
    m, n = g.shape[0], w.shape[0]
    y = torch.empty(m, n, device=g.device, dtype=g.dtype)
    _PLAIN["k"][lambda c: (triton.cdiv(m, c["BLOCK_M"]) * triton.cdiv(n, c["BLOCK_N"]),)](
        g, w, y, m, n, g.shape[1], g.stride(0), w.stride(0), y.stride(0))
    return y


