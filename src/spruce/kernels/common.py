"""What the kernels share: the target they are tuned for, the K padding, the activation
epilogue, and the gather of kept columns from row-major input.

Kept-index lists and compacted weights are padded at conversion to a multiple of
``K_MULTIPLE``, so the K loops run without masks (a config whose ``BLOCK_K`` does not divide
the padded count is pruned). Padded taps/features index entry 0 and meet zero weights.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

K_MULTIPLE = 64            # kept K is padded to a multiple of this
ACTIVATIONS = {None: 0, "relu": 1, "gelu": 2}   # name -> the ACTIVATION constexpr
PRECISIONS = ("tf32", "ieee", "tf32x3")          # what tl.dot does with fp32 operands


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotuning() -> bool:
    """Whether wrappers autotune (``SPRUCE_AUTOTUNE=0``: take the first fitting config)."""
    return os.environ.get("SPRUCE_AUTOTUNE", "1") != "0" and not interpreting()


def target(device: torch.device | None = None) -> str:
    """``"interpret"`` (CPU interpreter), ``"sm90"`` (Hopper) or ``"cuda"`` (other GPUs)."""
    if interpreting():
        return "interpret"
    major, _ = torch.cuda.get_device_capability(device)
    return "sm90" if major == 9 else "cuda"


def padded(k: int) -> int:
    return max(K_MULTIPLE, -(-k // K_MULTIPLE) * K_MULTIPLE)


def activation_code(activation: str | None) -> int:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {list(ACTIVATIONS)}; got {activation!r}")
    return ACTIVATIONS[activation]


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    return precision


def dot_upcast(dtype: torch.dtype) -> bool:
    """Whether ``mma`` must upcast: triton's interpreter (3.9) multiplies the raw 16-bit
    patterns of bf16 dot operands, so under ``TRITON_INTERPRET=1`` bf16 dots run in fp32."""
    return interpreting() and dtype == torch.bfloat16


def check_device(name: str, *tensors: torch.Tensor) -> None:
    """Same device for all; CUDA unless the interpreter runs (then CPU)."""
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"{name}: tensors on several devices {sorted(map(str, devices))}")
    dev = devices.pop()
    want = "cpu" if interpreting() else "cuda"
    if dev.type != want:
        raise ValueError(f"{name}: tensors are on {dev}; this kernel runs on {want} "
                         f"(TRITON_INTERPRET={'1' if interpreting() else 'unset'})")


@triton.jit
def tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of this program: output tiles in groups of ``GROUP_M`` rows of tiles,
    so consecutive programs share x rows and w columns in L2 (the Triton matmul tutorial)."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (pid // num_pid_in_group) * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % num_pid_in_group) % group_size_m
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


def make_config(bm: int, bn: int, bk: int, stages: int, warps: int, prefetch: bool,
                pairs: bool, group_m: int = 8) -> triton.Config:
    """One autotuning point of the gather kernels (tile, pipeline depth, fetch mode)."""
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m,
                          "PREFETCH": prefetch, "PAIRS": pairs},
                         num_stages=stages, num_warps=warps)


@triton.jit
def apply_activation(acc, ACTIVATION: tl.constexpr):
    """0: identity, 1: ReLU, 2: GELU (erf form, as ``nn.GELU()``), on the fp32 tile."""
    if ACTIVATION == 1:
        acc = tl.maximum(acc, 0.0)
    elif ACTIVATION == 2:
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    return acc


@triton.jit
def mma(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + a @ b``; ``UPCAST`` only under the interpreter (see ``dot_upcast``)."""
    if UPCAST:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


@triton.jit
def gather_flat(base_ptr, row_off, col_off, mask, MASKED: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_K: tl.constexpr):
    """``base_ptr[row_off[m] + col_off[k]]`` (0 where masked), row-major as a flat
    (BLOCK_M·BLOCK_K,) tensor; ``tile`` makes it (BLOCK_M, BLOCK_K).

    A flat load puts a warp's lanes along K — one row's consecutive kept columns, a cache
    line or two per instruction. For the same load in 2-D, with no contiguity known on either
    axis, triton 3.6 puts the lanes along M: a cache line per lane, 3× slower end to end on
    the FFN shapes (docs/kernels.md). Kept flat until the dot, a prefetched tile also stays in
    registers: a loop-carried 2-D tile goes through shared memory, and the fence before the
    MMA then waits for the prefetch (docs/kernels.md).
    """
    ptrs = tl.reshape(base_ptr + row_off[:, None] + col_off[None, :], (BLOCK_M * BLOCK_K,))
    if MASKED:
        vals = tl.load(ptrs, mask=tl.reshape(mask, (BLOCK_M * BLOCK_K,)), other=0)
    else:
        vals = tl.load(ptrs)
    return vals


@triton.jit
def gather_halves(x_ptr, row_off, col_off, mask, MASKED: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_K: tl.constexpr):
    """``gather_flat`` of 16-bit elements, fetched as the aligned 32-bit words that hold
    them (a 4-byte gather becomes an asynchronous copy in the software pipeline; a 2-byte one
    cannot); the wanted halves are picked by ``pick_halves``. Needs every ``row_off`` even, so
    the parity of ``col_off`` says which half (callers check strides and alignment)."""
    return gather_flat(x_ptr.to(tl.pointer_type(tl.int32)), row_off >> 1, col_off >> 1, mask,
                       MASKED, BLOCK_M, BLOCK_K)


@triton.jit
def pick_halves(words, col_off, dtype: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_K: tl.constexpr):
    """The (BLOCK_M, BLOCK_K) 16-bit tile from ``gather_halves``' flat words."""
    w = tl.reshape(words, (BLOCK_M, BLOCK_K))
    half = ((w >> ((col_off & 1) * 16)[None, :]) & 0xFFFF).to(tl.int16)
    return half.to(dtype, bitcast=True)


@triton.jit
def tile(vals, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """The (BLOCK_M, BLOCK_K) tile of ``gather_flat``'s values."""
    return tl.reshape(vals, (BLOCK_M, BLOCK_K))


def pairs_ok(x: torch.Tensor, *strides: int) -> bool:
    """Whether ``gather_halves`` may read ``x``: 16-bit, 4-byte aligned, the given
    (non-unit) strides even."""
    return x.element_size() == 2 and x.data_ptr() % 4 == 0 and all(s % 2 == 0 for s in strides)
