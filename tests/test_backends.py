"""dense / groupwise / channel backends and convert(): outputs equal the masked dense layer."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import spruce
from spruce.backends import available, get_backend
from spruce.backends.base import masked_weight
from spruce.patterns import get_pattern

FP32 = {"rtol": 1e-4, "atol": 1e-5}
LOW = {"rtol": 2e-2, "atol": 2e-2}  # fp16/bf16: inputs and weights rounded to 8/11 bits


def layers():
    yield "linear", nn.Linear(40, 24)
    yield "linear-nobias", nn.Linear(40, 24, bias=False)
    for stride in (1, 2):
        for padding in (0, 1):
            for bias in (True, False):
                yield f"conv-s{stride}-p{padding}-b{int(bias)}", nn.Conv2d(
                    6, 12, 3, stride=stride, padding=padding, bias=bias)
    yield "conv-dilated", nn.Conv2d(4, 8, 3, padding=2, dilation=2)


LAYERS = list(layers())


def probe(layer, dtype=torch.float32):
    shape = (5, layer.in_features) if isinstance(layer, nn.Linear) else (2, layer.in_channels, 9, 7)
    return torch.randn(shape).to(dtype)


def reference(layer, mask, x):
    w = masked_weight(layer, mask)
    if isinstance(layer, nn.Linear):
        return F.linear(x, w, layer.bias)
    return F.conv2d(x, w, layer.bias, layer.stride, layer.padding, layer.dilation)


def view_mask(pattern, layer, density):
    r, k = layer.weight.shape[0], layer.weight[0].numel()
    return get_pattern(pattern).compute_mask(torch.rand(r, k), density)


CASES = [("dense", p) for p in ("element", "2:4", "group", "channel")] + \
        [("groupwise", "group"), ("channel", "channel")]


@pytest.mark.parametrize("backend,pattern", CASES)
@pytest.mark.parametrize("density", [0.75, 0.5, 0.25])
@pytest.mark.parametrize("label,layer", LAYERS, ids=[lbl for lbl, _ in LAYERS])
def test_backend_equals_masked_dense(backend, pattern, density, label, layer):
    mask = view_mask(pattern, layer, None if pattern == "2:4" else density)
    b = get_backend(backend)
    assert b.reason(layer, mask, torch.float32, torch.device("cpu")) is None
    module = b.from_masked(layer, mask)
    for _ in range(2):  # fresh inputs each time
        x = probe(layer)
        torch.testing.assert_close(module(x), reference(layer, mask, x), **FP32)


@pytest.mark.parametrize("layout", ["rows", "cols"])
@pytest.mark.parametrize("groups_from", ["mask", "zeros"])
@pytest.mark.parametrize("label,layer", LAYERS[:3] + LAYERS[5:6], ids=["lin", "lin-nb", "c1", "c2"])
def test_groupwise_layouts_and_group_sources(layout, groups_from, label, layer):
    mask = view_mask("group", layer, 0.5)
    if groups_from == "zeros":  # a baked layer: zeros in the weight, no mask
        baked = copy.deepcopy(layer)
        with torch.no_grad():
            baked.weight.copy_(masked_weight(layer, mask))
        module = get_backend("groupwise").from_masked(baked, None, groups_from="zeros",
                                                      layout=layout)
    else:
        module = get_backend("groupwise").from_masked(layer, mask, layout=layout)
    assert module.kept.numel() == int(mask.any(0).sum())
    x = probe(layer)
    torch.testing.assert_close(module(x), reference(layer, mask, x), **FP32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend,pattern", [("groupwise", "group"), ("channel", "channel")])
def test_half_precision_on_cpu(dtype, backend, pattern):
    for _, layer in (LAYERS[0], LAYERS[3]):
        mask = view_mask(pattern, layer, 0.5)
        half = copy.deepcopy(layer).to(dtype)
        module = get_backend(backend).from_masked(half, mask)
        x = probe(layer, dtype)
        ref = reference(layer, mask, x.float())
        torch.testing.assert_close(module(x).float(), ref, **LOW)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 3), st.integers(1, 2),
       st.integers(0, 2), st.floats(0.05, 1.0), st.booleans())
def test_groupwise_fuzz_conv_shapes(c, o, k, stride, padding, density, bias):
    layer = nn.Conv2d(c, o, k, stride=stride, padding=padding, bias=bias)
    mask = view_mask("group", layer, density)
    module = get_backend("groupwise").from_masked(layer, mask)
    x = torch.randn(2, c, k + 4, k + 3)
    torch.testing.assert_close(module(x), reference(layer, mask, x), **FP32)


@pytest.mark.parametrize("label,layer", LAYERS[2:], ids=[lbl for lbl, _ in LAYERS[2:]])
def test_groupwise_whole_channels_run_as_a_smaller_conv(label, layer):
    t = layer.weight[0, 0].numel()
    pat = get_pattern("group", unit="channel").for_view(t)
    mask = pat.compute_mask(torch.rand(layer.out_channels, layer.in_channels * t), 0.5)
    module = get_backend("groupwise").from_masked(layer, mask)
    assert module.layout == "channels"
    assert torch.equal(module.channels, mask[0].reshape(-1, t)[:, 0].nonzero().flatten())
    x = probe(layer)
    torch.testing.assert_close(module(x), reference(layer, mask, x), **FP32)
    cl = x.contiguous(memory_format=torch.channels_last)  # gathered as an (N·H·W, C) matrix
    out = module(cl)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, reference(layer, mask, x), **FP32)
    split = mask.clone()
    split[:, int(module.kept[0])] = False  # one tap of a kept channel: no longer whole
    assert get_backend("groupwise").from_masked(layer, split).layout == "rows"
    with pytest.raises(ValueError, match="needs whole input channels kept"):
        get_backend("groupwise").from_masked(layer, split, layout="channels")


def test_groupwise_serves_element_mask_with_zero_columns():
    layer = nn.Linear(16, 8)
    mask = torch.rand(8, 16) > 0.5
    mask[:, :4] = False
    b = get_backend("groupwise")
    assert b.reason(layer, mask, torch.float32, torch.device("cpu")) is None
    x = probe(layer)
    torch.testing.assert_close(b.from_masked(layer, mask)(x), reference(layer, mask, x), **FP32)
    full = torch.ones(8, 16, dtype=torch.bool)
    assert "nothing to compact" in b.reason(layer, full, torch.float32, torch.device("cpu"))


def test_available_lists_cpu_backends():
    rows = {r["name"]: r for r in available()}
    assert {"dense", "groupwise", "channel"} <= set(rows)
    assert rows["groupwise"]["patterns"] == ["group", "structured"]
    assert "cpu" in rows["dense"]["devices"]
    assert rows["csr"]["dtypes"]["cpu"] == ["fp32"]  # torch's CPU sparse matmul: fp32 only
    assert "semi24" not in rows or torch.cuda.is_available()


@pytest.mark.parametrize("model_name,pattern,backend", [
    ("resnet18", "group", "groupwise"), ("vgg16", "group", "groupwise"),
    ("vit", "group", "groupwise"), ("resnet18", "channel", "channel"),
    ("vgg16", "element", "dense")])
def test_whole_model_equals_masked(model_name, pattern, backend):
    model = spruce.zoo.build(model_name, "cifar10", seed=0).eval()
    spruce.prune(model, pattern, 0.5)
    x = spruce.zoo.example_input(model_name, "cifar10", batch=2, seed=1)
    fast = spruce.convert(model, backend, example_input=x)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-4)
    assert all(r.backend == backend for r in fast.spruce_report.rows)
    assert spruce.masked_layers(model)  # the input model keeps its masks


def test_bert_base_whole_model():
    pytest.importorskip("transformers")
    model = spruce.zoo.build("bert_base", seed=0).eval()
    spruce.prune(model, "group", 0.5, exclude=["classifier"])
    x = spruce.zoo.example_input("bert_base", batch=2, seq_len=16)
    fast = spruce.convert(model, "groupwise", example_input=x)
    with torch.no_grad():
        torch.testing.assert_close(fast(**x).logits, model(**x).logits, rtol=1e-4, atol=1e-4)
    assert len(fast.spruce_report.rows) == 73  # 12 layers × (q, k, v, out, ffn1, ffn2) + pooler


def test_fallbacks_are_reported(small_net, small_input):
    spruce.prune(small_net, "channel", 0.5, overrides={"fc2": 1.0})
    fast = spruce.convert(small_net, "channel", example_input=small_input)
    fallbacks = {r.name: r.reason for r in fast.spruce_report.fallbacks}
    assert list(fallbacks) == ["fc2"] and "nothing to compact" in fallbacks["fc2"]
    assert fast.spruce_report.rows[-1].backend == "dense"
    torch.testing.assert_close(fast(small_input), small_net(small_input), **FP32)


def test_save_load_converted(small_net, small_input, tmp_path):
    from tests.conftest import SmallNet
    spruce.prune(small_net, "group", 0.5)
    fast = spruce.convert(small_net, "groupwise", dtype=torch.bfloat16)
    path = spruce.save(fast, tmp_path / "fast.safetensors")
    loaded = spruce.load(path, SmallNet())
    x = small_input.bfloat16()
    assert torch.equal(loaded(x), fast(x))
    assert type(loaded.conv1).__name__ == "GroupwiseConv2d"


@pytest.mark.parametrize("backend,pattern,match", [
    ("nosuch", "group", "unknown backend 'nosuch'; valid: "),
    ("groupwise", "element", "layer 'conv1': backend 'groupwise' does not serve the element "
                             "pattern; backends that do: "),
    ("channel", "group", "backends that do: .*groupwise"),
])
def test_convert_bad_input(backend, pattern, match, small_net):
    spruce.prune(small_net, pattern, 0.5)
    before = copy.deepcopy(small_net.state_dict())
    with pytest.raises(ValueError, match=match):
        spruce.convert(small_net, backend)
    assert all(torch.equal(v, before[k]) for k, v in small_net.state_dict().items())


def test_convert_unsupported_dtype_and_unavailable_backend(small_net):
    spruce.prune(small_net, "2:4")
    with pytest.raises(ValueError, match="layer 'conv1': backend 'csr' does not support bf16 "
                                         "on cpu; it supports fp32"):
        spruce.convert(small_net, "csr", dtype=torch.bfloat16)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="backend 'semi24' is not available here: .*CUDA"):
            spruce.convert(small_net, "semi24")


def test_convert_without_masks_warns(small_net, small_input):
    with pytest.warns(UserWarning, match="nothing to convert"):
        fast = spruce.convert(small_net, "dense")
    torch.testing.assert_close(fast(small_input), small_net(small_input))


def test_verify_catches_a_wrong_module(small_net, monkeypatch):
    spruce.prune(small_net, "group", 0.5)
    gw = get_backend("groupwise")
    real = gw.from_masked.__func__

    def broken(cls, layer, mask, **kw):
        module = real(cls, layer, mask, **kw)
        module.packed.mul_(1.01)
        return module

    monkeypatch.setattr(gw, "from_masked", classmethod(broken))
    with warnings.catch_warnings(), pytest.raises(ValueError, match="layer 'conv1'.*disagrees"):
        spruce.convert(small_net, "groupwise")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend,pattern", [("dense", "element"), ("groupwise", "group"),
                                             ("channel", "channel")])
def test_backends_on_cuda(backend, pattern, dtype):
    tol = {"rtol": 1e-2, "atol": 1e-2} if dtype == torch.float32 else LOW  # cuDNN convs use TF32
    for _, layer in LAYERS:
        mask = view_mask(pattern, layer, 0.5)
        gpu_layer = copy.deepcopy(layer).to("cuda", dtype)
        module = get_backend(backend).from_masked(gpu_layer, mask)
        x = probe(layer, dtype).cuda()
        ref = reference(copy.deepcopy(layer).double(), mask, x.double().cpu())
        torch.testing.assert_close(module(x).double().cpu(), ref, **tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_whole_channel_convs_on_cuda_both_layouts(dtype):
    tol = {"rtol": 1e-2, "atol": 1e-2} if dtype == torch.float32 else LOW
    for _, layer in LAYERS[2:]:
        t = layer.weight[0, 0].numel()
        pat = get_pattern("group", unit="channel").for_view(t)
        mask = pat.compute_mask(torch.rand(layer.out_channels, layer.in_channels * t), 0.5)
        module = get_backend("groupwise").from_masked(copy.deepcopy(layer).to("cuda", dtype),
                                                      mask)
        assert module.layout == "channels"
        x = probe(layer, dtype).cuda()
        ref = reference(copy.deepcopy(layer).double(), mask, x.double().cpu())
        for inp in (x, x.contiguous(memory_format=torch.channels_last)):
            torch.testing.assert_close(module(inp).double().cpu(), ref, **tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_whole_model_on_cuda(dtype):
    model = spruce.zoo.build("resnet18", "cifar10", seed=0).eval().cuda()
    spruce.prune(model, "group", 0.5)
    x = spruce.zoo.example_input("resnet18", "cifar10", batch=4).cuda()
    fast = spruce.convert(model, "groupwise", dtype=dtype, example_input=x.to(dtype))
    with torch.no_grad():
        ref = model(x).float()
        out = fast(x.to(dtype)).float()
    # fp32: the dense reference's cuDNN convolutions run in TF32 (torch's default)
    assert float((out - ref).norm() / ref.norm()) < (5e-3 if dtype == torch.float32 else 2e-2)


def test_cuda_graph_needs_cuda_and_an_example(small_net):
    spruce.prune(small_net, "group", 0.5)
    with pytest.raises(ValueError, match="needs example_input"):
        spruce.convert(small_net, "groupwise", cuda_graph=True)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA"):
            spruce.convert(small_net, "groupwise", example_input=torch.randn(2, 3, 8, 8),
                           cuda_graph=True)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["dense", "groupwise"])
def test_cuda_graph_replays_the_same_function(backend, small_net):
    spruce.prune(small_net, "group", 0.5)
    model = small_net.cuda()
    x = torch.randn(4, 3, 8, 8, device="cuda")
    fast = spruce.convert(model, backend, example_input=x, cuda_graph=True)
    for _ in range(3):  # fresh inputs of the captured shape replay the graph
        y = torch.randn(4, 3, 8, 8, device="cuda")
        torch.testing.assert_close(fast(y), model(y), rtol=1e-2, atol=1e-2)
    z = torch.randn(2, 3, 8, 8, device="cuda")  # another shape runs eagerly
    torch.testing.assert_close(fast(z), model(z), rtol=1e-2, atol=1e-2)
    assert fast.spruce_report.rows
