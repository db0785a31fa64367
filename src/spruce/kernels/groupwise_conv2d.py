"""Group-wise sparse Conv2d as an implicit GEMM: no im2col buffer, only kept taps are read.

The GEMM is ``y[m, n] = sum_k x_tap(m, k) * Wc[n, k]`` with m an output pixel
``(b, ho, wo)``, n an output channel and k a kept tap ``(c, kh, kw)``. Each program owns a
``BLOCK_M`` pixels × ``BLOCK_N`` channels tile and walks the kept taps ``BLOCK_K`` at a time.

``pack_conv2d`` orders the taps by ``(kh, kw, c)`` and pads every ``(kh, kw)`` run of them
to a multiple of ``TAP_GROUP`` (zero-weight taps), so each chunk has one kernel position:
its row/column offsets (``tap_h = kh·dil_h``, ``tap_w = kw·dil_w``) are two scalars, the
zero-padding test is one per output pixel, and only the channels (``tap_c``) vary along K —
in channels-last (NHWC) input they lie in one pixel's contiguous channel vector, the fast
path; NCHW is read in place through its strides, slower. The output is written through its
own strides (the wrapper matches the input's format).

The fetch modes (``PREFETCH``, ``PAIRS``), ``GROUP_M``, padding to ``K_MULTIPLE`` and fp32
precision are as in ``groupwise_linear``; PAIRS needs channels-last 16-bit input.
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
from .groupwise_linear import FETCH_MODES, FLOATS, wide_configs

TAP_GROUP = 32   # taps of one kernel position are padded to a multiple of this; BLOCK_K | it


@triton.jit
def _taps(tap_c_ptr, tap_h_ptr, tap_w_ptr, k0, offs_k):
    """Channels (BLOCK_K,) and the one row/column offset of the taps k0 .. k0+BLOCK_K."""
    return tl.load(tap_c_ptr + k0 + offs_k), tl.load(tap_h_ptr + k0), tl.load(tap_w_ptr + k0)


@triton.jit
def _fetch(x_ptr, row_off, h0, w0, c, dh, dw, H, W, stride_xc, stride_xh, stride_xw,
           PAIRS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Issue the loads of the input under channels ``c`` at kernel offset (dh, dw), zero
    outside the image; flat until ``_tile``."""
    hi = h0 + dh
    wi = w0 + dw
    inside = (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)                        # (BM,)
    mask = tl.broadcast_to(inside[:, None], (BLOCK_M, BLOCK_K))
    rows = row_off + dh * stride_xh + dw * stride_xw
    if PAIRS:   # stride_xc == 1, the other strides even, x 4-byte aligned (wrapper checks)
        fetched = gather_halves(x_ptr, rows, c, mask, True, BLOCK_M, BLOCK_K)
    else:
        fetched = gather_flat(x_ptr, rows, c * stride_xc, mask, True, BLOCK_M, BLOCK_K)
    return fetched


@triton.jit
def _tile(fetched, c, x_ptr, PAIRS: tl.constexpr, BLOCK_M: tl.constexpr,
          BLOCK_K: tl.constexpr):
    """The (BLOCK_M, BLOCK_K) input tile of ``_fetch`` (with PAIRS, the half is c's parity:
    every other term of the offset is even)."""
    if PAIRS:
        a = pick_halves(fetched, c, x_ptr.dtype.element_ty, BLOCK_M, BLOCK_K)
    else:
        a = tile(fetched, BLOCK_M, BLOCK_K)
    return a


@triton.jit
def groupwise_conv2d_kernel(
        x_ptr, tap_c_ptr, tap_h_ptr, tap_w_ptr, w_ptr, bias_ptr, y_ptr,
        M, N, Kc, H, W, Ho, Wo,                    # M = B·Ho·Wo; Kc padded (BLOCK_K | Kc)
        stride_xb, stride_xc, stride_xh, stride_xw, stride_wn, stride_wk,
        stride_yb, stride_yc, stride_yh, stride_yw,
        STRIDE_H, STRIDE_W, PAD_H, PAD_W,
        HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, PRECISION: tl.constexpr,
        UPCAST: tl.constexpr, PREFETCH: tl.constexpr, PAIRS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr):
    pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    pix = offs_m % M                                     # wrapped: loads stay in bounds
    b = pix // (Ho * Wo)
    ho = (pix % (Ho * Wo)) // Wo
    wo = pix % Wo
    h0 = ho * STRIDE_H - PAD_H                           # (BM,) top-left input corner
    w0 = wo * STRIDE_W - PAD_W
    row_off = b * stride_xb + h0 * stride_xh + w0 * stride_xw
    cols = offs_n % N
    w_ptrs = w_ptr + cols[None, :] * stride_wn + offs_k[:, None] * stride_wk    # (BK, BN)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if PREFETCH:    # input tile k+1 and the taps of tile k+2 are in flight during dot k
        c, dh, dw = _taps(tap_c_ptr, tap_h_ptr, tap_w_ptr, 0, offs_k)
        fetched = _fetch(x_ptr, row_off, h0, w0, c, dh, dw, H, W, stride_xc, stride_xh,
                         stride_xw, PAIRS, BLOCK_M, BLOCK_K)
        c_next, dh, dw = _taps(tap_c_ptr, tap_h_ptr, tap_w_ptr, BLOCK_K % Kc, offs_k)
        for k0 in range(0, Kc, BLOCK_K):
            a = _tile(fetched, c, x_ptr, PAIRS, BLOCK_M, BLOCK_K)
            fetched = _fetch(x_ptr, row_off, h0, w0, c_next, dh, dw, H, W, stride_xc,
                             stride_xh, stride_xw, PAIRS, BLOCK_M, BLOCK_K)
            c = c_next
            c_next, dh, dw = _taps(tap_c_ptr, tap_h_ptr, tap_w_ptr, (k0 + 2 * BLOCK_K) % Kc,
                                   offs_k)                                  # wraps: harmless
            b_tile = tl.load(w_ptrs)
            acc = mma(a, b_tile, acc, PRECISION, UPCAST)
            w_ptrs += BLOCK_K * stride_wk
    else:
        for k0 in range(0, Kc, BLOCK_K):
            c, dh, dw = _taps(tap_c_ptr, tap_h_ptr, tap_w_ptr, k0, offs_k)       # (BK,) each
            a = _tile(_fetch(x_ptr, row_off, h0, w0, c, dh, dw, H, W, stride_xc, stride_xh,
                             stride_xw, PAIRS, BLOCK_M, BLOCK_K), c, x_ptr, PAIRS,
                      BLOCK_M, BLOCK_K)                                           # (BM, BK)
            b_tile = tl.load(w_ptrs)                                              # (BK, BN)
            acc = mma(a, b_tile, acc, PRECISION, UPCAST)
            w_ptrs += BLOCK_K * stride_wk

    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols).to(tl.float32)[None, :]
    acc = apply_activation(acc, ACTIVATION)
    out_b = offs_m // (Ho * Wo)
    out_ho = (offs_m % (Ho * Wo)) // Wo
    out_wo = offs_m % Wo
    y_rows = y_ptr + out_b * stride_yb + out_ho * stride_yh + out_wo * stride_yw  # (BM,)
    tl.store(y_rows[:, None] + offs_n[None, :] * stride_yc, acc.to(y_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


# ------------------------------------------------------------------ configs and autotuning

def configs(target_name: str) -> list[triton.Config]:
    """The autotuning space for ``target_name`` ("interpret", "sm90", "cuda"): tiles × the
    three ways to fetch the input (``groupwise_linear.FETCH_MODES``)."""
    def cfg(bm, bn, bk, stages, warps, prefetch, pairs, group_m=8):
        assert TAP_GROUP % bk == 0, "BLOCK_K must divide the tap group"
        return make_config(bm, bn, bk, stages, warps, prefetch, pairs, group_m)
    if target_name == "interpret":
        return [cfg(16, 16, 16, 1, 1, False, False, group_m=2)]
    if target_name == "sm90":   # 16 warps: half the registers per thread, twice the warps
        tiles = [(128, 256, 32, 4, 16), (128, 256, 32, 3, 8), (128, 128, 32, 4, 8),
                 (128, 128, 32, 4, 16)]
    else:
        tiles = [(128, 128, 32, 3, 4), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4)]
    return [cfg(*t, *mode) for t in tiles for mode in FETCH_MODES]


def prune_configs(configs_: list[triton.Config], named_args: dict, **kwargs) -> list:
    """fp32: ``groupwise_linear.wide_configs`` (half the BLOCK_K, no PREFETCH)."""
    if named_args["x_ptr"].element_size() != 4:
        return configs_
    return wide_configs(configs_)


def candidates(target_name: str, pairs: bool) -> list[triton.Config]:
    """``configs(target_name)``, without the PAIRS ones where x cannot be read in pairs."""
    return [c for c in configs(target_name) if pairs or not c.kwargs["PAIRS"]]


_TUNED: dict[tuple[str, bool], triton.runtime.Autotuner] = {}


def tuned_kernel(target_name: str, pairs: bool):
    """``groupwise_conv2d_kernel`` autotuned over ``candidates(...)``, built once each."""
    if (target_name, pairs) not in _TUNED:
        _TUNED[target_name, pairs] = triton.autotune(
            configs=candidates(target_name, pairs), key=["M", "N", "Kc", "stride_xc"],
            prune_configs_by={"early_config_prune": prune_configs},
        )(groupwise_conv2d_kernel)
    return _TUNED[target_name, pairs]


# ------------------------------------------------------------------ packing and the wrapper

def pack_conv2d(weight_compact: torch.Tensor, kept: torch.Tensor, in_channels: int,
                kernel_size: tuple[int, int], dilation: tuple[int, int]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(taps, weight)`` for the kernel from the compacted view weight ``(O, Kc)`` and the
    kept columns ``kept`` of the ``(c, kh, kw)`` view.

    taps int32 ``(3, Kp)``, rows ``(c, kh·dil_h, kw·dil_w)``, ordered by ``(kh, kw, c)``; the
    taps of each kernel position padded to a multiple of ``TAP_GROUP`` (pad taps: channel 0
    at that position), the whole to a multiple of ``K_MULTIPLE``. weight ``(O, Kp)`` in the
    same order, zero for every pad tap.
    """
    kh_size, kw_size = kernel_size
    k_total = in_channels * kh_size * kw_size
    if weight_compact.dim() != 2 or kept.dim() != 1 or weight_compact.shape[1] != kept.numel():
        raise ValueError(f"pack_conv2d: need weight (O, Kc) and kept (Kc,); got "
                         f"{tuple(weight_compact.shape)} and {tuple(kept.shape)}")
    kept = kept.to(device="cpu", dtype=torch.long)
    if kept.numel() and not (0 <= int(kept.min()) and int(kept.max()) < k_total):
        raise ValueError(f"pack_conv2d: kept taps must lie in [0, {k_total}) for "
                         f"C={in_channels}, kernel {kernel_size}; got max {int(kept.max())}")
    c, pos = kept // (kh_size * kw_size), kept % (kh_size * kw_size)     # pos = kh·KW + kw
    order = torch.argsort(pos * in_channels + c)
    counts = torch.bincount(pos, minlength=kh_size * kw_size)
    groups = (counts + TAP_GROUP - 1) // TAP_GROUP * TAP_GROUP              # padded runs
    kp = padded(int(groups.sum()))
    starts = torch.cumsum(groups, 0) - groups
    rank = torch.arange(kept.numel()) - (torch.cumsum(counts, 0) - counts)[pos[order]]
    slot = starts[pos[order]] + rank                                       # column of each tap
    slot_pos = torch.repeat_interleave(torch.arange(kh_size * kw_size), groups)
    taps = torch.zeros(3, kp, dtype=torch.int32)
    taps[1, :slot_pos.numel()] = (slot_pos // kw_size * dilation[0]).to(torch.int32)
    taps[2, :slot_pos.numel()] = (slot_pos % kw_size * dilation[1]).to(torch.int32)
    taps[0, slot] = c[order].to(torch.int32)
    w = weight_compact.new_zeros(weight_compact.shape[0], kp)
    w[:, slot.to(w.device)] = weight_compact[:, order.to(weight_compact.device)]
    return taps.to(weight_compact.device), w


def out_size(h: int, w: int, taps_extent: tuple[int, int], stride: tuple[int, int],
             padding: tuple[int, int]) -> tuple[int, int]:
    """Output height/width; ``taps_extent`` = dilation·(kernel - 1) + 1 per side."""
    return ((h + 2 * padding[0] - taps_extent[0]) // stride[0] + 1,
            (w + 2 * padding[1] - taps_extent[1]) // stride[1] + 1)


def groupwise_conv2d(x: torch.Tensor, taps: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None, kernel_size: tuple[int, int],
                     stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0),
                     dilation: tuple[int, int] = (1, 1), activation: str | None = None,
                     precision: str = "tf32", config: dict | None = None) -> torch.Tensor:
    """The convolution of ``x`` (B, C, H, W; NCHW or channels-last) with the kept taps.

    taps int32 (3, Kp) and weight (O, Kp) from ``pack_conv2d``; bias (O,) or None.
    ``kernel_size``/``dilation`` give the output size (the taps already hold the dilated
    offsets). The output (B, O, Ho, Wo) is channels-last when x is, else contiguous NCHW.
    """
    # 1. check
    if x.dim() != 4 or x.dtype not in FLOATS or weight.dtype != x.dtype:
        raise ValueError(f"groupwise_conv2d: need x (B, C, H, W) and weight of one dtype "
                         f"among fp32/fp16/bf16; got x {tuple(x.shape)} {x.dtype}, weight "
                         f"{weight.dtype}")
    if taps.dtype != torch.int32 or taps.dim() != 2 or taps.shape[0] != 3 \
            or weight.dim() != 2 or weight.shape[1] != taps.shape[1] \
            or taps.shape[1] % K_MULTIPLE:   # the tap groups: pack_conv2d's contract
        raise ValueError(f"groupwise_conv2d: need int32 taps (3, Kp) and weight (O, Kp) with "
                         f"Kp a multiple of {K_MULTIPLE} (use pack_conv2d); got taps "
                         f"{taps.dtype} {tuple(taps.shape)}, weight {tuple(weight.shape)}")
    o = weight.shape[0]
    if bias is not None and bias.shape != (o,):
        raise ValueError(f"groupwise_conv2d: bias must be ({o},); got {tuple(bias.shape)}")
    check_device("groupwise_conv2d", x, taps, weight, *([] if bias is None else [bias]))
    bsz, _, h, w = x.shape
    extent = tuple(d * (k - 1) + 1 for d, k in zip(dilation, kernel_size, strict=True))
    ho, wo = out_size(h, w, extent, stride, padding)
    if ho <= 0 or wo <= 0:
        raise ValueError(f"groupwise_conv2d: input {h}×{w} is smaller than the kernel extent "
                         f"{extent} with padding {padding}")
    if max(x.numel(), bsz * o * ho * wo) >= 2**31:   # the kernel's offsets are 32-bit
        raise ValueError(f"groupwise_conv2d: input {tuple(x.shape)} / output "
                         f"{(bsz, o, ho, wo)} needs 64-bit offsets; split the batch")
    # 2. allocate
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    y = torch.empty((bsz, o, ho, wo), device=x.device, dtype=x.dtype,
                    memory_format=torch.channels_last if channels_last
                    else torch.contiguous_format)
    m = bsz * ho * wo
    if m == 0:
        return y
    # 3. launch
    args = (x, taps[0], taps[1], taps[2], weight, bias if bias is not None else weight, y,
            m, o, taps.shape[1], h, w, ho, wo, *x.stride(), weight.stride(0), weight.stride(1),
            y.stride(0), y.stride(1), y.stride(2), y.stride(3), *stride, *padding)
    flags = dict(HAS_BIAS=bias is not None, ACTIVATION=activation_code(activation),
                 PRECISION=check_precision(precision) if x.dtype == torch.float32 else "tf32",
                 UPCAST=dot_upcast(x.dtype))
    tgt = target(x.device if x.is_cuda else None)
    pairs = x.stride(1) == 1 and pairs_ok(x, x.stride(0), x.stride(2), x.stride(3))
    if config is None and not autotuning():
        config = prune_configs(candidates(tgt, pairs), {"M": m, "x_ptr": x})[0].all_kwargs()
    if config is None:
        def grid(meta):
            return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(o, meta["BLOCK_N"]),)
        tuned_kernel(tgt, pairs)[grid](*args, **flags)
    else:
        if config.get("PAIRS") and not pairs:
            raise ValueError("groupwise_conv2d: config has PAIRS=True but x is not 16-bit, "
                             "4-byte aligned, channels-last with even strides")
        if config.get("PREFETCH") and x.element_size() == 4:
            raise ValueError("groupwise_conv2d: PREFETCH is not offered for fp32 (see "
                             "groupwise_linear.wide_configs)")
        if TAP_GROUP % config["BLOCK_K"]:
            raise ValueError(f"groupwise_conv2d: BLOCK_K={config['BLOCK_K']} does not divide "
                             f"the tap group {TAP_GROUP}")
        grid = (triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(o, config["BLOCK_N"]),)
        groupwise_conv2d_kernel[grid](*args, **flags, **config)
    return y
