"""csr / bsr / semi24 backends against the dense masked reference, save/load, and reasons.

Tolerances: fp32 rtol 1e-4, atol 1e-5 on CPU (the brief's); on CUDA every dtype is compared
with a float64 reference of the same (rounded) weights and inputs: fp32 rtol 1e-4, atol
1e-4·scale; fp16/bf16 rtol 1e-2, atol 1e-2·scale, where scale = max |reference output|.
fp16/bf16 are not tested on CPU: torch's CSR/BSR matmul does not run them there, and the
backends say so (tested below).
"""

import copy
import json
import pickle

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from spruce.backends.base import get_backend
from spruce.backends.bsr import Bsr, block_reason, infer_block
from spruce.backends.csr import Csr
from spruce.backends.semi24 import Semi24, _subclass, not_24, shape_reason
from spruce.patterns import get_pattern
from spruce.view import view_shape

CUDA = torch.cuda.is_available()


def gpu(test):
    """Marked ``gpu`` and skipped without CUDA (run later on a GPU machine: ``-m gpu``)."""
    return pytest.mark.gpu(pytest.mark.skipif(not CUDA, reason="needs CUDA")(test))


# (kind, bias, stride, padding)
LAYERS = [("linear", b, 1, 0) for b in (True, False)] + [
    ("conv", b, s, p) for b in (True, False) for s in (1, 2) for p in (0, 1)]
DENSITIES = (0.75, 0.5, 0.25)
CSR_MASKS = [(p, d) for p in ("element", "block", "group", "channel") for d in DENSITIES] + [
    ("2:4", None)]
BSR_MASKS = [(b, d) for b in ((2, 4), (4, 4), (8, 8)) for d in DENSITIES]


SIZES = {1: (48, 32, 8, 16),  # small CPU shapes: views 32×48 and 16×72
         2: (128, 64, 16, 32)}  # 2:4-friendly (multiples of 16): views 64×128 and 32×144


def make_layer(kind, bias=True, stride=1, padding=0, size=1, dtype=torch.float32, device="cpu"):
    d_in, d_out, c_in, c_out = SIZES[size]
    layer = (nn.Linear(d_in, d_out, bias=bias) if kind == "linear"
             else nn.Conv2d(c_in, c_out, 3, stride, padding, bias=bias))
    return layer.to(device=device, dtype=dtype)


def make_mask(pattern, density, shape):
    scores = torch.rand(shape)
    if isinstance(pattern, tuple):
        return get_pattern("block", block=pattern).compute_mask(scores, density)
    if pattern == "block":
        return get_pattern("block", block=(2, 4)).compute_mask(scores, density)
    return get_pattern(pattern).compute_mask(scores, density)


def example(layer, batch=3):
    w = layer.weight
    shape = (batch, 5, w.shape[1]) if isinstance(layer, nn.Linear) else (batch, w.shape[1], 9, 9)
    return torch.randn(shape, dtype=w.dtype, device=w.device)


def reference(layer, mask, x, dtype=None):
    """The dense masked layer on ``x`` (in ``dtype`` if given, e.g. float64)."""
    dtype = dtype or x.dtype
    w = layer.weight.detach().to(dtype) * mask.reshape(layer.weight.shape).to(x.device, dtype)
    b = None if layer.bias is None else layer.bias.detach().to(dtype)
    if isinstance(layer, nn.Linear):
        return F.linear(x.to(dtype), w, b)
    return F.conv2d(x.to(dtype), w, b, layer.stride, layer.padding, layer.dilation)


def assert_matches(out, layer, mask, x):
    """Against a float64 reference, with the tolerances of the module docstring."""
    ref = reference(layer, mask, x, torch.float64)
    scale = float(ref.abs().max())
    if x.dtype == torch.float32:
        tol = {"rtol": 1e-4, "atol": 1e-4 * scale if x.is_cuda else 1e-5}
    else:
        tol = {"rtol": 1e-2, "atol": 1e-2 * scale}
    assert out.shape == ref.shape and out.dtype == x.dtype
    torch.testing.assert_close(out.double(), ref, **tol)


def roundtrip(backend, module, layer, mask, x, tmp_path):
    """state_dict → safetensors → empty(config) → load_state_dict: same outputs (bitwise on
    CPU; on CUDA within the reference tolerance, since cuSPARSE's CSR SpMM is not bitwise
    reproducible from run to run — seen on an H200)."""
    sd = module.state_dict()
    assert all(t.layout == torch.strided for t in sd.values())
    save_file({k: v.cpu() for k, v in sd.items()}, str(tmp_path / "m.safetensors"))
    config = json.loads(json.dumps(module.config()))  # JSON-able
    fresh = backend.empty(config)
    fresh.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    fresh = fresh.to(x.device)
    if x.is_cuda:
        assert_matches(fresh(x), layer, mask, x)
    else:
        torch.testing.assert_close(fresh(x), module(x), rtol=0, atol=0)


# -- CPU equality ------------------------------------------------------------------------

@pytest.mark.parametrize("pattern,density", CSR_MASKS)
@pytest.mark.parametrize("kind,bias,stride,padding", LAYERS)
def test_csr_matches_dense_masked(kind, bias, stride, padding, pattern, density):
    layer = make_layer(kind, bias, stride, padding)
    mask = make_mask(pattern, density, view_shape(layer))
    m = Csr.from_masked(layer, mask)
    assert m.config()["nnz"] == int(mask.sum())  # kept entries stored, zeros or not
    x = example(layer)
    assert_matches(m(x), layer, mask, x)


@pytest.mark.parametrize("block,density", BSR_MASKS)
@pytest.mark.parametrize("kind,bias,stride,padding", LAYERS)
def test_bsr_matches_dense_masked(kind, bias, stride, padding, block, density):
    layer = make_layer(kind, bias, stride, padding)
    mask = make_mask(block, density, view_shape(layer))
    m = Bsr.from_masked(layer, mask)
    s = min(block)  # (2, 4) blocks run as 2×2 tiles
    assert m.config()["blocksize"] == [s, s]
    assert m.config()["nnz_blocks"] * s * s == int(mask.sum())
    x = example(layer)
    assert_matches(m(x), layer, mask, x)


@pytest.mark.parametrize("backend,pattern", [(Csr, "element"), (Bsr, (4, 4))])
def test_conv_whole_batch_gemm_path(backend, pattern):
    """The CUDA conv path (one GEMM over the batch), run on the CPU."""
    layer = make_layer("conv", True, 2, 1)
    mask = make_mask(pattern, 0.5, view_shape(layer))
    m = backend.from_masked(layer, mask)
    m.per_sample = False
    x = example(layer)
    assert_matches(m(x), layer, mask, x)


def test_all_kept_and_explicit_zero_weights():
    layer = make_layer("linear")
    with torch.no_grad():
        layer.weight[:, :8] = 0.0  # kept but zero: still stored
    m = Csr.from_masked(layer, None)
    assert m.config()["nnz"] == layer.weight.numel()
    x = example(layer)
    assert_matches(m(x), layer, torch.ones(view_shape(layer), dtype=torch.bool), x)
    assert Bsr.from_masked(layer, None).config()["blocksize"] == [16, 16]


# -- save / load / move ------------------------------------------------------------------

@pytest.mark.parametrize("backend,pattern", [(Csr, "element"), (Csr, "2:4"), (Bsr, (4, 4))])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_save_load_roundtrip(backend, pattern, kind, tmp_path):
    layer = make_layer(kind, True, 2, 1)
    mask = make_mask(pattern, None if pattern == "2:4" else 0.5, view_shape(layer))
    m = backend.from_masked(layer, mask)
    roundtrip(backend, m, layer, mask, example(layer), tmp_path)


@pytest.mark.parametrize("backend", [Csr, Bsr])
def test_to_dtype_rebuilds_sparse_weight_and_pickles(backend):
    layer = make_layer("conv", True, 1, 1)
    mask = make_mask((2, 2), 0.5, view_shape(layer))
    m = backend.from_masked(layer, mask).double()
    assert m.w.dtype == torch.float64 and m.values.dtype == torch.float64
    assert m.crow_indices.dtype == torch.int32  # index buffers untouched by .double()
    x = example(layer).double()
    torch.testing.assert_close(m(x), reference(layer, mask, x))
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        torch.testing.assert_close(clone(x), m(x))


def test_registry():
    assert get_backend("csr") is Csr and get_backend("bsr") is Bsr
    assert get_backend("semi24") is Semi24


# -- reasons -----------------------------------------------------------------------------

def test_bsr_reasons():
    layer = make_layer("linear")
    cpu = torch.device("cpu")
    element = make_mask("element", 0.5, view_shape(layer))
    assert "no square block structure that divides 32x48" in Bsr.reason(layer, element,
                                                                        torch.float32, cpu)
    rows = make_mask((1, 16), 0.5, view_shape(layer))  # 1×16 tiles: not square
    assert "largest uniform tile is 1x16" in Bsr.reason(layer, rows, torch.float32, cpu)
    blocks = make_mask((4, 8), 0.5, view_shape(layer))
    assert infer_block(blocks) == (4, 4)
    assert Bsr.reason(layer, blocks, torch.float32, cpu) is None
    assert "square" in block_reason(blocks, view_shape(layer), (4, 8))
    assert "does not divide" in block_reason(blocks, view_shape(layer), (32, 32))
    assert "partly kept" in block_reason(blocks, view_shape(layer), (8, 8))
    assert "supports fp32 only, not bf16" in Bsr.reason(layer, blocks, torch.bfloat16, cpu)
    with pytest.raises(ValueError, match="bsr cannot serve Linear.*no square block"):
        Bsr.from_masked(layer, element)


def test_csr_reasons():
    cpu = torch.device("cpu")
    layer = make_layer("linear")
    assert Csr.reason(layer, None, torch.float32, cpu) is None
    assert "supports fp32 only, not fp16" in Csr.reason(layer, None, torch.float16, cpu)
    assert "does not match the weight view (32, 48)" in Csr.reason(
        layer, torch.ones(48, 32, dtype=torch.bool), torch.float32, cpu)
    grouped = nn.Conv2d(8, 16, 3, groups=2)
    assert "groups=2" in Csr.reason(grouped, None, torch.float32, cpu)
    with pytest.raises(ValueError, match="csr cannot serve Linear.*fp16"):
        Csr.from_masked(make_layer("linear", dtype=torch.float16), None)


def test_two_four_check():
    scores = torch.rand(16, 64)
    assert not_24(get_pattern("2:4").compute_mask(scores)) is None
    fewer = get_pattern("1:4").compute_mask(scores)  # runs keeping < 2 are fine
    assert not_24(fewer) is None
    dense_run = get_pattern("2:4").compute_mask(scores)
    dense_run[3, 8:12] = True
    assert "a run of 4 keeps 4 entries (row 3, columns 8..11)" in not_24(dense_run)
    assert "a run of 4 keeps 3" in not_24(get_pattern("3:4").compute_mask(scores))
    assert "K=27 is not a multiple of 4" in not_24(torch.zeros(4, 27, dtype=torch.bool))
    assert "not 2:4" in not_24(None)


def test_semi24_shape_constraints():
    c = _subclass()._DTYPE_SHAPE_CONSTRAINTS[torch.float16]
    assert shape_reason((c.sparse_min_rows, 2 * c.sparse_min_cols), torch.float16) is None
    bad = (c.sparse_min_rows, c.sparse_min_cols + 4)
    assert "is not a positive multiple of" in shape_reason(bad, torch.float16)


@pytest.mark.skipif(CUDA, reason="checks the message on a machine without CUDA")
def test_semi24_unavailable_without_cuda():
    msg = "semi24 needs a CUDA GPU with compute capability >= 8.0 (sm80+); this machine has no CUDA"
    assert Semi24.unavailable() == msg
    layer = make_layer("linear", dtype=torch.float16)
    assert Semi24.reason(layer, None, torch.float16, torch.device("cpu")) == msg
    with pytest.raises(ValueError, match="no CUDA"):
        Semi24.from_masked(layer, get_pattern("2:4").compute_mask(torch.rand(view_shape(layer))))


def test_semi24_empty_builds_on_cpu_and_refuses_to_run():
    m = Semi24.empty({"shape": [32, 64], "dtype": "fp16", "bias": True, "conv": None})
    assert m.w is None and m.state_dict()["masked"].shape == (32, 64)
    with pytest.raises(RuntimeError, match="on CUDA in fp16/bf16 only"):
        m(torch.randn(2, 64, dtype=torch.float16))


# -- CUDA (run on a GPU machine: pytest -m gpu) ------------------------------------------

GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
GPU_LAYERS = [("linear", True, 1, 0), ("linear", False, 1, 0), ("conv", True, 1, 0),
              ("conv", True, 2, 1), ("conv", False, 2, 1)]


@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("kind,bias,stride,padding", GPU_LAYERS)
@pytest.mark.parametrize("backend,pattern", [(Csr, "element"), (Csr, "group"), (Bsr, (2, 4)),
                                             (Bsr, (16, 16))])
@gpu
def test_gpu_csr_bsr(backend, pattern, kind, bias, stride, padding, dtype, tmp_path):
    layer = make_layer(kind, bias, stride, padding, size=2, dtype=dtype, device="cuda")
    mask = make_mask(pattern, 0.5, view_shape(layer))
    m = backend.from_masked(layer, mask)
    assert not m.per_sample
    x = example(layer, batch=4)
    assert_matches(m(x), layer, mask, x)
    roundtrip(backend, m, layer, mask, x, tmp_path)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind,bias,stride,padding", GPU_LAYERS)
@gpu
def test_gpu_semi24(kind, bias, stride, padding, dtype, tmp_path):
    layer = make_layer(kind, bias, stride, padding, size=2, dtype=dtype, device="cuda")
    mask = get_pattern("2:4").compute_mask(torch.rand(view_shape(layer)))
    assert Semi24.reason(layer, mask, dtype, torch.device("cuda")) is None
    m = Semi24.from_masked(layer, mask)
    for batch in (4, 1):  # B·L or B·T rows not a multiple of 8: padded inside the subclass
        x = example(layer, batch=batch)
        assert_matches(m(x), layer, mask, x)
    roundtrip(Semi24, m, layer, mask, x, tmp_path)


@gpu
def test_gpu_semi24_reasons():
    layer = make_layer("linear", size=2, dtype=torch.float16, device="cuda")
    cuda = torch.device("cuda")
    assert "not 2:4" in Semi24.reason(layer, make_mask("element", 0.75, view_shape(layer)),
                                      torch.float16, cuda)
    assert "does not support fp32" in Semi24.reason(layer, None, torch.float32, cuda)
    assert "does not run on cpu" in Semi24.reason(layer, None, torch.float16,
                                                  torch.device("cpu"))


@gpu
def test_gpu_move_cpu_built_module_to_cuda_half():
    layer = make_layer("conv", True, 2, 1, size=2)
    mask = make_mask((4, 4), 0.5, view_shape(layer))
    for backend in (Csr, Bsr):
        m = backend.from_masked(layer, mask).to("cuda", torch.float16)
        assert m.w.is_cuda and m.w.dtype == torch.float16 and not m.per_sample
        half = copy.deepcopy(layer).to("cuda", torch.float16)
        x = example(half)
        assert_matches(m(x), half, mask, x)
