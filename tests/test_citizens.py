"""Converted models behave like the pruned model on models spruce did not write: HF ViT,
T5, BERT (vocab 1000), Llama, GPT-2 and ``nn.MultiheadAttention`` built from small
configs, every CPU backend and ``auto``."""

import copy
import warnings

import pytest
import torch
from torch import nn

import spruce
from spruce.auto import AutoTiming
from spruce.backends.face import DenseFace
from spruce.errors import SpruceError
from spruce.masks import get_mask, unparametrized

tf = pytest.importorskip("transformers")

FAST = AutoTiming(warmup=0, min_runs=1, min_time_s=0.0, max_time_s=0.01, abandon=None)
PATTERN = {"dense": ("element", {}), "groupwise": ("group", {}), "channel": ("channel", {}),
           "csr": ("element", {}), "bsr": ("block", {"block": (2, 2)}), "auto": ("group", {})}


def vit():
    cfg = tf.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, image_size=16, patch_size=8, num_labels=4)
    return tf.ViTForImageClassification(cfg), {"pixel_values": torch.randn(2, 3, 16, 16)}


def t5(vocab=100):
    cfg = tf.T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                      num_decoder_layers=1, num_heads=2, decoder_start_token_id=0)
    ids = torch.randint(0, vocab, (2, 7))
    return tf.T5ForConditionalGeneration(cfg), {"input_ids": ids,
                                                "decoder_input_ids": ids[:, :5]}


def bert(vocab=1000):
    cfg = tf.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, num_labels=2)
    return tf.BertForSequenceClassification(cfg), {
        "input_ids": torch.randint(0, vocab, (2, 8)),
        "attention_mask": torch.ones(2, 8, dtype=torch.long)}


def llama():
    cfg = tf.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
    return tf.LlamaForCausalLM(cfg), {"input_ids": torch.randint(0, 100, (2, 8))}


def gpt2():
    cfg = tf.GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=2, n_positions=16,
                        bos_token_id=0, eos_token_id=0)
    return tf.GPT2LMHeadModel(cfg), {"input_ids": torch.randint(0, 100, (2, 8))}


class MHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.fc = nn.Linear(32, 8)

    def forward(self, x):
        return self.fc(self.attn(x, x, x, need_weights=False)[0])


def mha():
    return MHA(), torch.randn(2, 5, 32)


MODELS = {"vit": vit, "t5": t5, "bert": bert, "llama": llama, "gpt2": gpt2, "mha": mha}


def call(model, x):
    out = model(**x) if isinstance(x, dict) else model(*x) if isinstance(x, tuple) else model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


def pruned(name, backend):
    model, x = MODELS[name]()
    pattern, kw = PATTERN[backend]
    spruce.prune(model.eval(), pattern, 0.5, **kw)
    return model, x


def convert(model, backend, x):
    options = {"timing": FAST} if backend == "auto" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return spruce.convert(model, backend, example_input=x, **options)


@pytest.mark.parametrize("backend", list(PATTERN))
@pytest.mark.parametrize("name", list(MODELS))
def test_converted_model_runs_and_equals_the_pruned_one(name, backend):
    model, x = pruned(name, backend)
    fast = convert(model, backend, x)
    with torch.no_grad():
        torch.testing.assert_close(call(fast, x), call(model, x), rtol=1e-4, atol=1e-5)
    rows = fast.spruce_report.rows
    assert rows and len(rows) == len(spruce.masked_layers(model))
    for r in rows:  # what runs is the backend asked for, or dense with the reason
        assert r.backend == backend or r.reason or backend == "auto", r
        assert type(fast.get_submodule(r.name)).__name__ != "ParametrizedLinear"
    if name == "mha" and backend not in ("dense", "auto"):
        out_proj = next(r for r in rows if r.name == "attn.out_proj")
        assert out_proj.backend == "dense" and "MultiheadAttention" in out_proj.reason
        assert isinstance(fast.attn.out_proj, nn.Linear)


SIZES = ("in_features", "out_features", "in_channels", "out_channels", "kernel_size",
         "stride", "padding", "dilation", "groups", "padding_mode")


@pytest.mark.parametrize("backend,pattern,kw", [
    ("groupwise", "group", {}), ("channel", "channel", {}), ("csr", "element", {}),
    ("bsr", "block", {"block": (2, 2)})])
@pytest.mark.parametrize("kind", ["linear", "conv", "conv_nobias"])
def test_converted_modules_expose_the_replaced_layers_attributes(backend, pattern, kw, kind):
    layer = {"linear": nn.Linear(8, 6), "conv": nn.Conv2d(4, 6, 3, stride=2, padding=1),
             "conv_nobias": nn.Conv2d(4, 6, 3, bias=False, dilation=2)}[kind]
    model = nn.Sequential(layer)
    spruce.prune(model, pattern, 0.5, **kw)
    masked = layer.weight.detach().clone()  # original · mask, the layer's shape
    fast = spruce.convert(model, backend)
    mod = fast[0]
    assert isinstance(mod, DenseFace) and fast.spruce_report.rows[0].backend == backend
    assert torch.equal(mod.weight, masked) and mod.weight.dtype == masked.dtype
    assert mod.weight is mod.weight  # built once, then cached
    plain = unparametrized(layer)
    if plain.bias is None:
        assert mod.bias is None
    else:
        assert torch.equal(mod.bias, plain.bias)
    for attr in SIZES:
        if hasattr(plain, attr):
            assert getattr(mod, attr) == getattr(plain, attr), attr
    with pytest.raises(AttributeError):
        mod.weight = masked  # read-only
    if backend != "csr" and backend != "bsr":  # sparse mm on CPU runs fp32 only
        assert mod.double().weight.dtype == torch.float64  # the cache follows .to()


def test_a_parent_that_breaks_on_a_converted_child_gets_it_back_dense():
    model = Picky().eval()
    spruce.prune(model, "group", 0.5)
    x = torch.randn(3, 16)
    fast = spruce.convert(model, "groupwise", example_input=x)
    rows = {r.name: r for r in fast.spruce_report.rows}
    assert rows["other"].backend == "groupwise" and rows["other"].reason is None
    assert rows["fc"].backend == "dense" and "TypeError: fc must be an nn.Linear" in \
        rows["fc"].reason
    torch.testing.assert_close(fast(x), model(x))
    with pytest.raises(TypeError):  # without the example there is nothing to run
        spruce.convert(model, "groupwise")(x)


def test_a_parent_that_changes_the_result_gets_its_child_back_dense():
    class Scales(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.other = nn.Linear(16, 16), nn.Linear(16, 16)

        def forward(self, x):
            y = self.fc(x) * (1.0 if isinstance(self.fc, nn.Linear) else 2.0)
            return self.other(y)

    model = Scales().eval()
    spruce.prune(model, "element", 0.5)
    x = torch.randn(3, 16)
    fast = spruce.convert(model, "csr", example_input=x)
    rows = {r.name: r for r in fast.spruce_report.rows}
    assert rows["fc"].backend == "dense" and "relative error" in rows["fc"].reason
    assert rows["other"].backend == "csr"
    torch.testing.assert_close(fast(x), model(x))


def test_auto_times_on_the_users_inputs_with_a_small_vocabulary(monkeypatch):
    import spruce.auto as auto

    model, x = bert(vocab=100)
    spruce.prune(model.eval(), "group", 0.5, exclude=["classifier"])
    seen = []
    real = auto._time

    def spy(fn, example, dtype, device, timing, probe=False, inputs=None, **kw):
        if inputs and isinstance(inputs[0], dict):
            seen.extend(inputs)
        return real(fn, example, dtype, device, timing, probe, inputs)

    monkeypatch.setattr(auto, "_time", spy)
    fast = convert(model, "auto", x)
    assert seen  # the whole model was timed, on copies of the example
    for inp in seen:
        assert inp.keys() == x.keys()
        for k in x:
            assert inp[k].dtype == x[k].dtype and inp[k].shape == x[k].shape
            assert torch.equal(inp[k].flatten().sort().values, x[k].flatten().sort().values)
    torch.testing.assert_close(call(fast, x), call(model, x))


def test_auto_on_t5_runs_and_its_plan_matches_the_report():
    model, x = pruned("t5", "auto")
    fast = convert(model, "auto", x)
    torch.testing.assert_close(call(fast, x), call(model, x), rtol=1e-4, atol=1e-5)
    assert set(fast.spruce_plan.layers) == {r.name for r in fast.spruce_report.rows}


class Tied(nn.Module):
    """One Linear under two names and two positional inputs."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = self.a
        self.out = nn.Linear(16, 4)

    def forward(self, x, y):
        return self.out(self.a(x) + self.b(y))


@pytest.mark.parametrize("backend", ["groupwise", "csr", "dense"])
def test_tuple_inputs_and_a_layer_under_two_names(backend, tmp_path):
    model = Tied().eval()
    spruce.prune(model, "group", 0.5)
    x = (torch.randn(3, 16), torch.randn(3, 16))
    fast = spruce.convert(model, backend, example_input=x)
    assert fast.a is fast.b and len(fast.spruce_report.rows) == 2
    torch.testing.assert_close(fast(*x), model(*x))
    path = spruce.save(fast, tmp_path / "tied.safetensors")
    loaded = spruce.load(path, Tied())
    assert loaded.a is loaded.b
    torch.testing.assert_close(loaded(*x), model(*x))
    if backend != "dense":
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:  # saved once
            assert not [k for k in f.keys() if k.startswith("b.")]


def test_capture_shapes_and_cast_take_tuples_and_dicts():
    from spruce.backends.convert import capture_input_shapes, cast_input

    model = Tied()
    x = (torch.randn(3, 16), torch.randn(3, 16))
    cast = cast_input({"pair": x, "ids": torch.arange(3)}, torch.float64, torch.device("cpu"))
    assert cast["pair"][0].dtype == torch.float64 and cast["ids"].dtype == torch.int64
    assert capture_input_shapes(model, x, ["a", "out"]) == {
        "a": (torch.Size([3, 16]), False), "out": (torch.Size([3, 16]), False)}


def test_csr_refuses_half_on_the_cpu_and_tracing():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    spruce.prune(model, "element", 0.5)
    fast = spruce.convert(model, "csr")
    x = torch.randn(2, 8)
    with pytest.raises(SpruceError, match="csr.*fp16.*fp32 only"):
        fast.half()
    torch.testing.assert_close(fast(x), model(x))  # unchanged and still running
    with pytest.raises(SpruceError, match="cannot be traced"):
        torch.jit.trace(fast, x)


def test_weight_cache_is_not_saved_or_copied(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8))
    spruce.prune(model, "group", 0.5)
    fast = spruce.convert(model, "groupwise")
    w = fast[0].weight
    assert "weight" not in fast.state_dict() and "0.weight" not in fast.state_dict()
    clone = copy.deepcopy(fast)
    assert torch.equal(clone[0].weight, w)
    assert torch.equal(w, model[0].weight.detach())
    assert get_mask(model[0]) is not None


class Picky(nn.Module):
    """Breaks unless ``fc`` is an nn.Linear: a parent the layer check cannot see."""

    def __init__(self):
        super().__init__()
        self.fc, self.other = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        if not isinstance(self.fc, nn.Linear):
            raise TypeError("fc must be an nn.Linear")
        return self.other(self.fc(x))


def test_auto_sends_back_what_breaks_the_model_and_keeps_the_reason(monkeypatch):
    import spruce.auto as auto

    monkeypatch.setattr(auto, "pick", lambda times, margin: max(times, key=lambda n: n != "dense"))
    model = Picky().eval()
    spruce.prune(model, "group", 0.5)
    x = torch.randn(4, 16)
    fast = convert(model, "auto", x)
    rows = {r.name: r for r in fast.spruce_report.rows}
    assert rows["fc"].backend == "dense" and "fc must be an nn.Linear" in rows["fc"].reason
    assert fast.spruce_plan.layers["fc"].choice == "dense"
    assert fast.spruce_plan.layers["fc"].reverted
    torch.testing.assert_close(fast(x), model(x))


def test_auto_goes_back_to_dense_when_timing_the_whole_model_fails(monkeypatch):
    import spruce.auto as auto

    monkeypatch.setattr(auto, "pick", lambda times, margin: max(times, key=lambda n: n != "dense"))
    real, calls = auto._time, []

    def flaky(fn, example, dtype, device, timing, probe=False, inputs=None, **kw):
        if not isinstance(example, tuple):  # whole-model timing: dense first, then auto
            calls.append(fn)
            if len(calls) == 2:
                raise RuntimeError("out of memory")
        return real(fn, example, dtype, device, timing, probe, inputs)

    monkeypatch.setattr(auto, "_time", flaky)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    spruce.prune(model, "group", 0.5)
    x = torch.randn(4, 16)
    fast = convert(model, "auto", x)
    assert len(calls) == 2
    for r in fast.spruce_report.rows:
        assert r.backend == "dense" and "timing the whole model failed" in r.reason
    torch.testing.assert_close(fast(x), model(x))


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_cuda_backend_modules_expose_the_dense_masked_weight(kind):
    """groupwise_fused and semi24 modules run on CUDA only, but are built (and describe
    themselves) anywhere."""
    pytest.importorskip("triton")
    from spruce.backends.groupwise_fused import GroupwiseFused
    from spruce.backends.im2col import ConvGeom
    from spruce.backends.semi24 import Semi24Gemm

    layer = nn.Linear(40, 8) if kind == "linear" else nn.Conv2d(6, 8, 3, dilation=2, padding=2)
    model = nn.Sequential(layer)
    spruce.prune(model, "group", 0.5)
    mask, plain = get_mask(layer), unparametrized(layer)
    masked = layer.weight.detach().clone()
    fused = GroupwiseFused.from_masked(plain, mask, precision="tf32")
    geom = None if kind == "linear" else ConvGeom.of(plain)
    semi = Semi24Gemm(masked.reshape(8, -1), plain.bias, geom)
    for mod in (fused, semi):
        assert torch.equal(mod.weight, masked) and torch.equal(mod.bias, plain.bias)
        for attr in SIZES:
            if hasattr(plain, attr):
                assert getattr(mod, attr) == getattr(plain, attr), (type(mod), attr)
    clone = GroupwiseFused.empty(fused.config())
    clone.load_state_dict(fused.state_dict())
    assert torch.equal(clone.weight, masked)
