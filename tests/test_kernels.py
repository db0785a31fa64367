"""Group-wise fused Triton kernels against a float64 reference.

Without CUDA they run on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``, set
here when CUDA is absent); the ``gpu`` tests run the autotuned kernels on the device. Shapes
are small and deliberately not multiples of any block size.
"""

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from spruce.backends.base import masked_weight  # noqa: E402
from spruce.backends.groupwise_fused import GroupwiseFused  # noqa: E402
from spruce.kernels.common import K_MULTIPLE, interpreting  # noqa: E402
from spruce.kernels.groupwise_conv2d import (  # noqa: E402
    TAP_GROUP,
    groupwise_conv2d,
    pack_conv2d,
)
from spruce.kernels.groupwise_linear import groupwise_linear, pack_linear  # noqa: E402

interpreter = pytest.mark.skipif(not interpreting(), reason="CPU interpreter tests "
                                 "(TRITON_INTERPRET=1 without CUDA)")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# normwise relative error against float64 on the same (rounded) operands: the output's own
# rounding dominates for fp16/bf16; TF32 products (GPU fp32) land near 3e-4
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
GPU_TOL = {**TOL, torch.float32: 2e-3}
ACTS = {None: lambda t: t, "relu": F.relu, "gelu": F.gelu}
MODES = [{"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2, "PREFETCH": prefetch,
          "PAIRS": pairs, "num_warps": 1, "num_stages": 1}
         for prefetch, pairs in ((False, False), (True, False), (False, True))]
MODE_IDS = ["in-loop", "prefetch", "pairs"]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).norm() / ref.norm().clamp_min(1e-30))


@pytest.fixture
def poisoned_outputs(monkeypatch):
    """Outputs start as NaN, so an element the kernel never writes fails the comparison."""
    empty = torch.empty

    def nan_empty(*args, **kwargs):
        t = empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t
    monkeypatch.setattr(torch, "empty", nan_empty)


def random_kept(k: int, fraction: float) -> torch.Tensor:
    return torch.randperm(k)[:max(1, round(k * fraction))].sort().values


def linear_case(m, k, n, fraction, dtype, bias=True, device="cpu"):
    x = torch.randn(m, k).to(dtype)
    w = torch.randn(n, k).to(dtype)
    b = torch.randn(n).to(dtype) if bias else None
    kept = random_kept(k, fraction)
    idx, wp = pack_linear(w[:, kept], kept, k)
    ref = F.linear(x.double()[:, kept], w.double()[:, kept], None if b is None else b.double())
    dev = torch.device(device)
    return (x.to(dev), idx.to(dev), wp.to(dev), None if b is None else b.to(dev)), ref


# ------------------------------------------------------------------------------ linear

@interpreter
@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("m,k,n,fraction", [(37, 100, 29, 0.45), (5, 70, 18, 0.25),
                                            (19, 33, 40, 0.9)])
def test_linear_matches_float64(dtype, m, k, n, fraction):
    args, ref = linear_case(m, k, n, fraction, dtype)
    out = groupwise_linear(*args)
    assert out.shape == (m, n) and out.dtype == dtype
    assert rel_err(out, ref) < TOL[dtype]


@interpreter
@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("config", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_fetch_modes_and_epilogue(config, activation, bias):
    dtype = torch.float32 if config == MODES[0] else torch.float16
    args, ref = linear_case(21, 90, 35, 0.6, dtype, bias=bias)
    out = groupwise_linear(*args, activation=activation, config=config)
    assert rel_err(out, ACTS[activation](ref)) < TOL[dtype]


@interpreter
def test_linear_pairs_needs_aligned_16bit_rows():
    x = torch.randn(6, 41).half()[:, 1:]                # odd row stride, 2-byte offset
    kept = random_kept(40, 0.5)
    idx, wp = pack_linear(torch.randn(8, kept.numel()).half(), kept, 40)
    with pytest.raises(ValueError, match="PAIRS=True"):
        groupwise_linear(x, idx, wp, config=MODES[2])
    out = groupwise_linear(x, idx, wp)                  # the default falls back
    ref = x.double()[:, kept] @ wp[:, :kept.numel()].double().t()
    assert rel_err(out, ref) < TOL[torch.float16]


@interpreter
def test_linear_strided_and_batched_input():
    x = torch.randn(3, 7, 2 * 50)[..., ::2]                     # (3, 7, 50), stride 2 on K
    w = torch.randn(12, 50)
    kept = random_kept(50, 0.5)
    idx, wp = pack_linear(w[:, kept], kept, 50)
    out = groupwise_linear(x, idx, wp.t().contiguous().t())    # a (Kp, N)-major weight too
    ref = x.double()[..., kept] @ w.double()[:, kept].t()
    assert out.shape == (3, 7, 12) and rel_err(out, ref) < TOL[torch.float32]


def test_pack_linear_pads_and_checks():
    w, kept = torch.randn(4, 3), torch.tensor([1, 5, 8])
    idx, wp = pack_linear(w, kept, 9)
    assert idx.dtype == torch.int32 and idx.numel() == K_MULTIPLE and wp.shape == (4, K_MULTIPLE)
    assert torch.equal(wp[:, :3], w) and not wp[:, 3:].any() and not idx[3:].any()
    with pytest.raises(ValueError, match=r"kept indices must lie in \[0, 8\)"):
        pack_linear(w, kept, 8)
    with pytest.raises(ValueError, match="use pack_linear"):
        groupwise_linear(torch.randn(2, 9), kept.int(), w)
    with pytest.raises(ValueError, match="PREFETCH is not offered for fp32"):
        groupwise_linear(torch.randn(2, 9), idx, wp, config=MODES[1])


# ------------------------------------------------------------------------------ conv2d

CONVS = [  # C, O, kernel, stride, padding, dilation, H, W
    (5, 11, (3, 3), (1, 1), (1, 1), (1, 1), 9, 7),
    (6, 9, (3, 2), (2, 1), (1, 0), (1, 1), 10, 8),
    (4, 13, (3, 3), (2, 2), (2, 2), (2, 2), 11, 9),
    (7, 6, (1, 1), (1, 1), (0, 0), (1, 1), 5, 6),
]


def conv_case(c, o, kernel, stride, padding, dilation, h, w, fraction, dtype, bias=True):
    layer = nn.Conv2d(c, o, kernel, stride, padding, dilation, bias=bias)
    kept = random_kept(c * kernel[0] * kernel[1], fraction)
    mask = torch.zeros(o, c * kernel[0] * kernel[1], dtype=torch.bool)
    mask[:, kept] = True
    layer = layer.to(dtype)
    view = layer.weight.detach().reshape(o, -1)
    taps, wp = pack_conv2d(view[:, kept], kept, c, kernel, dilation)
    x = torch.randn(2, c, h, w).to(dtype)
    ref = F.conv2d(x.double(), masked_weight(layer, mask).double(),
                   None if layer.bias is None else layer.bias.detach().double(),
                   stride, padding, dilation)
    b = None if layer.bias is None else layer.bias.detach()
    return x, (taps, wp, b, kernel, stride, padding, dilation), ref


@interpreter
@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("geometry", CONVS, ids=["3x3", "3x2-s21", "dil2-s2", "1x1"])
def test_conv2d_matches_float64(geometry, dtype, channels_last):
    x, args, ref = conv_case(*geometry, fraction=0.5, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = groupwise_conv2d(x, *args)
    assert out.shape == ref.shape and out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last
                             else torch.contiguous_format)
    assert rel_err(out, ref) < TOL[dtype]


@interpreter
@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("config", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("geometry", CONVS[1:3], ids=["3x2-s21", "dil2-s2"])  # even C
@pytest.mark.parametrize("bias,activation", [(False, None), (True, "relu")])
def test_conv2d_fetch_modes_and_epilogue(config, geometry, bias, activation):
    x, args, ref = conv_case(*geometry, fraction=0.3, dtype=torch.float16, bias=bias)
    out = groupwise_conv2d(x.contiguous(memory_format=torch.channels_last), *args,
                           activation=activation, config=config)
    assert rel_err(out, ACTS[activation](ref)) < TOL[torch.float16]
    if config["PAIRS"]:
        with pytest.raises(ValueError, match="PAIRS=True"):
            groupwise_conv2d(x, *args, config=config)      # NCHW: no pairs


def test_pack_conv2d_groups_taps_by_position():
    c, kernel, dilation = 3, (2, 2), (1, 3)
    kept = torch.tensor([0, 3, 5, 6, 9])        # (c, kh, kw) = 000, 011, 101, 110, 201
    w = torch.arange(10.0).reshape(2, 5)
    taps, wp = pack_conv2d(w, kept, c, kernel, dilation)
    g = TAP_GROUP                                # one group per kernel position
    assert taps.shape == (3, 4 * g) and wp.shape == (2, 4 * g)
    slots = [0, g, g + 1, 2 * g, 3 * g]
    assert taps[:, slots].tolist() == [[0, 1, 2, 1, 0], [0, 0, 0, 1, 1], [0, 3, 3, 0, 3]]
    assert wp[:, slots].tolist() == [[0, 2, 4, 3, 1], [5, 7, 9, 8, 6]]
    assert int(wp.ne(0).sum()) == 9               # every pad tap has zero weight
    for group in range(4):                       # one kernel position per group
        block = taps[1:, group * g:(group + 1) * g]
        assert (block == block[:, :1]).all()
    with pytest.raises(ValueError, match=r"kept taps must lie in \[0, 12\)"):
        pack_conv2d(w, torch.tensor([0, 1, 2, 3, 12]), c, kernel, dilation)


# ------------------------------------------------------------------------------ backend

def _module_cases():
    torch.manual_seed(1)
    yield "linear", nn.Linear(45, 20), torch.randn(3, 4, 45)
    yield "conv", nn.Conv2d(6, 10, 3, stride=2, padding=1), torch.randn(2, 6, 9, 8)


@interpreter
@pytest.mark.parametrize("label,layer,x", list(_module_cases()), ids=["linear", "conv"])
def test_backend_module_equals_masked_dense_and_reloads(label, layer, x):
    k = layer.weight[0].numel()
    mask = torch.zeros(layer.weight.shape[0], k, dtype=torch.bool)
    mask[:, random_kept(k, 0.4)] = True
    module = GroupwiseFused.from_masked(layer, mask, precision="tf32")
    w = masked_weight(layer, mask)
    ref = F.linear(x.double(), w.double(), layer.bias.double()) if label == "linear" else \
        F.conv2d(x.double(), w.double(), layer.bias.double(), layer.stride, layer.padding)
    with torch.no_grad():
        out = module(x)
    assert rel_err(out, ref.detach()) < TOL[torch.float32]
    cfg = module.config()
    assert cfg["backend"] == "groupwise_fused" and cfg["kept"] == int(mask.any(0).sum())
    clone = GroupwiseFused.empty(cfg)
    clone.load_state_dict(module.state_dict())
    assert torch.equal(clone(x), out)


def test_backend_declares_itself():
    assert GroupwiseFused.patterns == ("group",) and GroupwiseFused.devices == ("cuda",)
    if not torch.cuda.is_available():
        assert "CUDA" in GroupwiseFused.unavailable()
    with pytest.raises(ValueError, match="activation must be one of"):
        GroupwiseFused.from_masked(nn.Linear(8, 4), torch.ones(4, 8, dtype=torch.bool),
                                   activation="tanh")


# ------------------------------------------------------------------------------ GPU
# The fixed-config tests cover each dtype, layout and both K loops (PREFETCH off/on) without
# autotuning (each config is a compile); two tests go through the autotuner.

def gpu_config(kernel_module, m, x, kc, which):
    """The ``which``-th config the wrapper could pick for ``x`` (tile 0 in each fetch mode)."""
    from spruce.kernels.common import pairs_ok, target
    x_strides = [st for st in x.stride() if st != 1]
    pairs = x.stride(-1 if x.dim() == 2 else 1) == 1 and pairs_ok(x, *x_strides)
    cands = kernel_module.prune_configs(kernel_module.candidates(target(), pairs),
                                        {"M": m, "x_ptr": x, "Kc": kc})
    return cands[which % len(cands)].all_kwargs()


@pytest.mark.gpu
@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("which", [0, 1, 2], ids=["mode0", "mode1", "mode2"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("m", [1, 1000])
def test_gpu_linear(dtype, m, which):
    from spruce.kernels import groupwise_linear as gl
    args, ref = linear_case(m, 300, 200, 0.5, dtype, device="cuda")
    config = gpu_config(gl, m, args[0], args[1].numel(), which)
    for activation in (None, "gelu"):
        out = groupwise_linear(*args, activation=activation, config=config)
        assert rel_err(out.cpu(), ACTS[activation](ref)) < GPU_TOL[dtype]


@pytest.mark.gpu
@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("which", [0, 1, 2], ids=["mode0", "mode1", "mode2"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("geometry", [CONVS[0], CONVS[2]], ids=["3x3", "dil2-s2"])
def test_gpu_conv2d(geometry, dtype, channels_last, which):
    from spruce.kernels import groupwise_conv2d as gc
    c, o, *rest = geometry
    x, (taps, wp, b, *geom), ref = conv_case(c * 8, o * 8, *rest, fraction=0.5, dtype=dtype)
    x = x.cuda()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    config = gpu_config(gc, x.shape[0] * ref.shape[2] * ref.shape[3], x, taps.shape[1], which)
    out = groupwise_conv2d(x, taps.cuda(), wp.cuda(), b.cuda(), *geom, config=config)
    assert rel_err(out.cpu(), ref) < GPU_TOL[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("which", [0, 1, 2], ids=["mode0", "mode1", "mode2"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16", "bf16"])
def test_gpu_repeatable(dtype, which):
    """The same call gives the same bits twenty times (a race would move them)."""
    from spruce.kernels import groupwise_conv2d as gc
    from spruce.kernels import groupwise_linear as gl
    args, ref = linear_case(1000, 300, 200, 0.5, dtype, device="cuda")
    config = gpu_config(gl, 1000, args[0], args[1].numel(), which)
    outs = [groupwise_linear(*args, activation="gelu", config=config) for _ in range(20)]
    assert all(torch.equal(o, outs[0]) for o in outs)
    assert rel_err(outs[0].cpu(), F.gelu(ref)) < GPU_TOL[dtype]
    x, (taps, wp, b, *geom), ref = conv_case(48, 64, (3, 3), (1, 1), (1, 1), (1, 1), 13, 11,
                                             fraction=0.5, dtype=dtype)
    x = x.cuda().contiguous(memory_format=torch.channels_last)
    config = gpu_config(gc, x.shape[0] * 13 * 11, x, taps.shape[1], which)
    outs = [groupwise_conv2d(x, taps.cuda(), wp.cuda(), b.cuda(), *geom, config=config)
            for _ in range(20)]
    assert all(torch.equal(o, outs[0]) for o in outs)
    assert rel_err(outs[0].cpu(), ref) < GPU_TOL[dtype]


@pytest.mark.gpu
@pytest.mark.usefixtures("poisoned_outputs")
def test_gpu_autotuned_fp16():
    args, ref = linear_case(512, 256, 192, 0.5, torch.float16, device="cuda")
    assert rel_err(groupwise_linear(*args).cpu(), ref) < GPU_TOL[torch.float16]
    x, (taps, wp, b, *geom), ref = conv_case(64, 96, (3, 3), (1, 1), (1, 1), (1, 1), 16, 16,
                                             fraction=0.5, dtype=torch.float16)
    x = x.cuda().contiguous(memory_format=torch.channels_last)
    out = groupwise_conv2d(x, taps.cuda(), wp.cuda(), b.cuda(), *geom)
    assert rel_err(out.cpu(), ref) < GPU_TOL[torch.float16]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_gpu_convert_small_net(small_net, small_input, dtype, monkeypatch):
    import spruce
    monkeypatch.setenv("SPRUCE_AUTOTUNE", "0")
    spruce.prune(small_net, pattern="group", density=0.5, exclude=["dw"])
    fast = spruce.convert(small_net.cuda(), "groupwise_fused", dtype=dtype,
                          example_input=small_input.cuda().to(dtype))
    used = {r.name: r.backend for r in fast.spruce_report.rows}
    assert used["conv1"] == used["fc1"] == "groupwise_fused"
    assert all(r.rel_error is not None for r in fast.spruce_report.rows)


def _gather_case(m, k, kc, dtype, device):
    g = torch.Generator().manual_seed(m * 131 + k)
    x = torch.randn(m, k, generator=g).to(dtype)
    kept = torch.randperm(k, generator=g)[:kc].sort().values
    return x.to(device), kept.to(device)


@interpreter
@pytest.mark.parametrize("m,k,kc", [(1, 1, 1), (37, 100, 51), (70, 300, 299), (5, 513, 17)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_columns_exact(m, k, kc, dtype):
    from spruce.kernels.gather import gather_columns
    x, kept = _gather_case(m, k, kc, dtype, "cpu")
    assert torch.equal(gather_columns(x, kept, blocks=(16, 32, 1)), x[:, kept])
    wide = torch.randn(m, k + 9).to(dtype)[:, 3:k + 3]  # a row stride that is not k
    assert torch.equal(gather_columns(wide, kept.int(), blocks=(8, 64, 1)), wide[:, kept])


@interpreter
def test_gather_columns_rejects_bad_input():
    from spruce.kernels.gather import gather_columns
    x, kept = _gather_case(4, 8, 3, torch.float32, "cpu")
    with pytest.raises(ValueError, match="unit column stride"):
        gather_columns(x.t(), kept)
    with pytest.raises(ValueError, match="1-D int32/int64"):
        gather_columns(x, kept.float())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_columns_gpu(dtype):
    from spruce.kernels.gather import gather_columns
    for m, k, kc in ((8192, 3072, 1536), (1000, 768, 191), (3, 70, 9)):
        x, kept = _gather_case(m, k, kc, dtype, "cuda")
        assert torch.equal(gather_columns(x, kept), x[:, kept])


def test_gather_blocks_keep_tiles_full():
    from spruce.kernels.gather import BLOCKS, blocks_for
    assert blocks_for(5000) == BLOCKS
    for kc in (1, 20, 32, 300):
        bm, bk, _ = blocks_for(kc)
        assert bk >= kc or bk == BLOCKS[1]
        assert bm * bk == BLOCKS[0] * BLOCKS[1] and bk <= 2 * max(kc, 16)
