"""Group-wise sparse Linear in one kernel: ``y = act(x[:, kept] @ Wc^T + b)``.

The activation ``x`` (M, K) is read through the kept-feature index list: each K step loads
``kept[k0:k0+BLOCK_K]`` once and gathers those columns of a ``BLOCK_M`` row tile straight
into the dot, so the gathered activation ``x[:, kept]`` (M, Kc) never exists in memory.
The compacted weight ``Wc`` (N, Kc) is dense. ``kept`` and ``Wc`` are padded to a multiple
of ``K_MULTIPLE`` by ``pack_linear`` (at conversion), so the K loop has no masks.

Programs are ordered in groups of ``GROUP_M`` row tiles (the Triton matmul tutorial's
swizzle) so the x rows one group gathers stay in L2 while its column tiles run.

How x is fetched is tuned (``configs``): a flat gather in the K loop, the same one step
ahead (``PREFETCH``), or — 16-bit x — the 32-bit words holding the wanted halves, which the
software pipeline turns into asynchronous copies (``PAIRS``, see ``common.gather_halves``).
fp32 x is gathered in the loop only (``wide_configs``).

fp32 operands: ``tl.dot`` runs them on tensor cores as TF32 (``precision="tf32"``, about
3e-4 relative error), as three TF32 products (``"tf32x3"``, near fp32), or as plain fp32
FMAs (``"ieee"``). fp16/bf16 operands accumulate in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (
    make_config,
    tile_ids,
    K_MULTIPLE,
    activation_code,
    apply_activation,
    autotuning,
    check_device,
    check_precision,
    dot_upcast,
    gather_flat,
    gather_halves,
    mma,
    padded,
    pairs_ok,
    pick_halves,
    target,
    tile,
)

FLOATS = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _fetch(x_ptr, row_off, kidx, stride_xk, PAIRS: tl.constexpr, BLOCK_M: tl.constexpr,
           BLOCK_K: tl.constexpr):
    """Issue the loads of x[rows, kidx]; ``row_off`` = rows · stride_xm. Flat until ``_tile``."""
    if PAIRS:   # stride_xk == 1, stride_xm even, x 4-byte aligned (checked by the wrapper)
        fetched = gather_halves(x_ptr, row_off, kidx, 0, False, BLOCK_M, BLOCK_K)
    else:
        fetched = gather_flat(x_ptr, row_off, kidx * stride_xk, 0, False, BLOCK_M, BLOCK_K)
    return fetched


@triton.jit
def _tile(fetched, kidx, x_ptr, PAIRS: tl.constexpr, BLOCK_M: tl.constexpr,
          BLOCK_K: tl.constexpr):
    """The (BLOCK_M, BLOCK_K) x tile of ``_fetch``."""
    if PAIRS:
        a = pick_halves(fetched, kidx, x_ptr.dtype.element_ty, BLOCK_M, BLOCK_K)
    else:
        a = tile(fetched, BLOCK_M, BLOCK_K)
    return a


@triton.jit
def groupwise_linear_kernel(
        x_ptr, kept_ptr, w_ptr, bias_ptr, y_ptr,
        M, N, Kc,                                   # Kc: padded kept count (BLOCK_K | Kc)
        stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
        HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, PRECISION: tl.constexpr,
        UPCAST: tl.constexpr, PREFETCH: tl.constexpr, PAIRS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr):
    pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows = offs_m % M                   # wrapped: every load is in bounds, no masks in the loop
    cols = offs_n % N
    row_off = rows * stride_xm                                                   # (BM,)
    w_ptrs = w_ptr + cols[None, :] * stride_wn + offs_k[:, None] * stride_wk     # (BK, BN)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if PREFETCH:    # x tile k+1 and the indices of tile k+2 are in flight during dot k
        kidx = tl.load(kept_ptr + offs_k)
        fetched = _fetch(x_ptr, row_off, kidx, stride_xk, PAIRS, BLOCK_M, BLOCK_K)
        kidx_next = tl.load(kept_ptr + BLOCK_K % Kc + offs_k)
        for k0 in range(0, Kc, BLOCK_K):
            a = _tile(fetched, kidx, x_ptr, PAIRS, BLOCK_M, BLOCK_K)
            fetched = _fetch(x_ptr, row_off, kidx_next, stride_xk, PAIRS, BLOCK_M, BLOCK_K)
            kidx = kidx_next
            kidx_next = tl.load(kept_ptr + (k0 + 2 * BLOCK_K) % Kc + offs_k)  # wraps: harmless
            b = tl.load(w_ptrs)
            acc = mma(a, b, acc, PRECISION, UPCAST)
            w_ptrs += BLOCK_K * stride_wk
    else:
        for k0 in range(0, Kc, BLOCK_K):
            kidx = tl.load(kept_ptr + k0 + offs_k)                                # (BK,)
            a = _tile(_fetch(x_ptr, row_off, kidx, stride_xk, PAIRS, BLOCK_M, BLOCK_K), kidx,
                      x_ptr, PAIRS, BLOCK_M, BLOCK_K)                            # (BM, BK)
            b = tl.load(w_ptrs)                                                   # (BK, BN)
            acc = mma(a, b, acc, PRECISION, UPCAST)
            w_ptrs += BLOCK_K * stride_wk

    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols).to(tl.float32)[None, :]
    acc = apply_activation(acc, ACTIVATION)
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


# ------------------------------------------------------------------ configs and autotuning

def configs(target_name: str) -> list[triton.Config]:
    """The autotuning space for ``target_name`` ("interpret", "sm90", "cuda"): tiles × the
    three ways to fetch x — gather in the K loop, gather one step ahead (PREFETCH), or
    16-bit pairs as 32-bit words that the software pipeline copies asynchronously (PAIRS)."""
    cfg = make_config
    if target_name == "interpret":
        return [cfg(16, 16, 16, 1, 1, False, False, group_m=2)]
    if target_name == "sm90":   # 16 warps: half the registers per thread, twice the warps
        tiles = [(128, 256, 64, 3, 8), (128, 256, 64, 3, 16), (128, 256, 32, 4, 16),
                 (128, 128, 64, 4, 8), (128, 128, 64, 4, 16),          # many rows
                 (64, 32, 128, 4, 4), (64, 64, 128, 4, 8), (64, 32, 64, 5, 4),
                 (64, 64, 64, 4, 8), (64, 128, 64, 4, 8)]               # few rows
    else:
        tiles = [(128, 128, 32, 3, 4), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4),
                 (64, 64, 32, 4, 4), (64, 32, 64, 4, 4)]
    return [cfg(*t, *mode) for t in tiles for mode in FETCH_MODES]


FETCH_MODES = ((False, False), (True, False), (False, True))   # (PREFETCH, PAIRS)


def prune_configs(configs_: list[triton.Config], named_args: dict, **kwargs) -> list:
    """Row-tile sizes that fit M, BLOCK_K dividing the padded Kc; fp32 halves BLOCK_K (same
    shared memory per stage)."""
    m, wide = named_args["M"], named_args["x_ptr"].element_size() == 4
    kc = named_args.get("Kc", K_MULTIPLE)
    few_rows = [c for c in configs_ if c.kwargs["BLOCK_M"] <= 64]
    many_rows = [c for c in configs_ if c.kwargs["BLOCK_M"] > 64]
    kept = (few_rows if m <= 64 else many_rows if m >= 1024 else configs_) or configs_
    if wide:
        kept = wide_configs(kept)
    return [c for c in kept if kc % c.kwargs["BLOCK_K"] == 0] or kept[-1:]


def wide_configs(configs_: list[triton.Config]) -> list[triton.Config]:
    """fp32 operands: half the BLOCK_K (the same shared memory per stage), and no PREFETCH —
    the in-loop fp32 gather is already an asynchronous copy, and PREFETCH with fp32 gave a
    wrong result in one GPU test (docs/kernels.md)."""
    return [triton.Config({**c.kwargs, "BLOCK_K": max(16, c.kwargs["BLOCK_K"] // 2),
                           "PREFETCH": False}, num_stages=c.num_stages, num_warps=c.num_warps)
            for c in configs_ if not c.kwargs["PREFETCH"] or len(configs_) == 1]


def candidates(target_name: str, pairs: bool) -> list[triton.Config]:
    """``configs(target_name)``, without the PAIRS ones where x cannot be read in pairs."""
    return [c for c in configs(target_name) if pairs or not c.kwargs["PAIRS"]]


_TUNED: dict[tuple[str, bool], triton.runtime.Autotuner] = {}


def tuned_kernel(target_name: str, pairs: bool):
    """``groupwise_linear_kernel`` autotuned over ``candidates(...)``, built once each."""
    if (target_name, pairs) not in _TUNED:
        _TUNED[target_name, pairs] = triton.autotune(
            configs=candidates(target_name, pairs), key=["M", "N", "Kc", "stride_wk"],
            prune_configs_by={"early_config_prune": prune_configs},
        )(groupwise_linear_kernel)
    return _TUNED[target_name, pairs]


# ------------------------------------------------------------------ packing and the wrapper

def pack_linear(weight_compact: torch.Tensor, kept: torch.Tensor, in_features: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kept, weight)`` padded for the kernel: int32 ``(Kp,)`` and ``(N, Kp)`` contiguous,
    ``Kp`` a multiple of ``K_MULTIPLE``; pad entries index feature 0 with zero weight."""
    if weight_compact.dim() != 2 or kept.dim() != 1 or weight_compact.shape[1] != kept.numel():
        raise ValueError(f"pack_linear: need weight (N, Kc) and kept (Kc,); got "
                         f"{tuple(weight_compact.shape)} and {tuple(kept.shape)}")
    if kept.numel() and not (0 <= int(kept.min()) and int(kept.max()) < in_features):
        raise ValueError(f"pack_linear: kept indices must lie in [0, {in_features}); got "
                         f"[{int(kept.min())}, {int(kept.max())}]")
    kc, kp = kept.numel(), padded(kept.numel())
    idx = torch.zeros(kp, dtype=torch.int32, device=weight_compact.device)
    idx[:kc] = kept.to(device=idx.device, dtype=torch.int32)
    w = weight_compact.new_zeros(weight_compact.shape[0], kp)
    w[:, :kc] = weight_compact
    return idx, w


def groupwise_linear(x: torch.Tensor, kept: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None = None, activation: str | None = None,
                     precision: str = "tf32", config: dict | None = None) -> torch.Tensor:
    """``act(x[..., kept] @ weight.T + bias)`` without building ``x[..., kept]``.

    x (..., K); kept int32 (Kp,) and weight (N, Kp) from ``pack_linear`` (any strides);
    bias (N,) or None. ``config`` (a ``triton.Config.all_kwargs()``: BLOCK_M, BLOCK_N,
    BLOCK_K, GROUP_M, PREFETCH, PAIRS, num_warps, num_stages) skips autotuning.
    Returns (..., N) in x's dtype.
    """
    # 1. check
    if x.dtype not in FLOATS or weight.dtype != x.dtype:
        raise ValueError(f"groupwise_linear: x and weight must share one of fp32/fp16/bf16; "
                         f"got {x.dtype} and {weight.dtype}")
    if kept.dtype != torch.int32 or kept.dim() != 1 or weight.dim() != 2 \
            or weight.shape[1] != kept.numel() or kept.numel() % K_MULTIPLE:
        raise ValueError(f"groupwise_linear: need int32 kept (Kp,) and weight (N, Kp) with Kp "
                         f"a multiple of {K_MULTIPLE} (use pack_linear); got kept "
                         f"{kept.dtype} {tuple(kept.shape)}, weight {tuple(weight.shape)}")
    n = weight.shape[0]
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"groupwise_linear: bias must be ({n},); got {tuple(bias.shape)}")
    check_device("groupwise_linear", x, kept, weight, *([] if bias is None else [bias]))
    x2 = x.reshape(-1, x.shape[-1])                                               # (M, K)
    m = x2.shape[0]
    # 2. allocate
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    if m == 0:
        return y.reshape(*x.shape[:-1], n)
    # 3. launch
    args = (x2, kept, weight, bias if bias is not None else weight, y, m, n, kept.numel(),
            x2.stride(0), x2.stride(1), weight.stride(0), weight.stride(1),
            y.stride(0), y.stride(1))
    flags = dict(HAS_BIAS=bias is not None, ACTIVATION=activation_code(activation),
                 PRECISION=check_precision(precision) if x.dtype == torch.float32 else "tf32",
                 UPCAST=dot_upcast(x.dtype))
    tgt = target(x.device if x.is_cuda else None)
    pairs = x2.stride(1) == 1 and pairs_ok(x2, x2.stride(0))
    if config is None and not autotuning():
        config = prune_configs(candidates(tgt, pairs),
                               {"M": m, "x_ptr": x2, "Kc": kept.numel()})[0].all_kwargs()
    if config is None:
        def grid(meta):
            return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)
        tuned_kernel(tgt, pairs)[grid](*args, **flags)
    else:
        if config.get("PAIRS") and not pairs:
            raise ValueError("groupwise_linear: config has PAIRS=True but x is not 16-bit, "
                             "4-byte aligned with unit K stride and even row stride")
        if config.get("PREFETCH") and x.element_size() == 4:
            raise ValueError("groupwise_linear: PREFETCH is not offered for fp32 (see "
                             "wide_configs)")
        if kept.numel() % config["BLOCK_K"]:
            raise ValueError(f"groupwise_linear: BLOCK_K={config['BLOCK_K']} does not divide "
                             f"the padded kept count {kept.numel()}")
        grid = (triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]),)
        groupwise_linear_kernel[grid](*args, **flags, **config)
    return y.reshape(*x.shape[:-1], n)
