"""transformers' ``Conv1D`` and ``nn.Conv1d`` through every CPU backend: each converted
layer equals its dense masked reference, exposes the original layer's attributes, and a
GPT-2 / Conv1d model converts, runs, saves and loads."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import spruce
from spruce.masks import WeightMask
from spruce.patterns import get_pattern

tf = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402

CASES = [("dense", "element", {}), ("groupwise", "group", {}), ("channel", "channel", {}),
         ("csr", "element", {}), ("bsr", "block", {"block": (2, 2)})]


def view_of(layer: nn.Module) -> torch.Tensor:
    """The 2-D view [out, K]: Conv1D stores [in, out] and is viewed transposed."""
    w = layer.weight.detach()
    return w.t() if isinstance(layer, Conv1D) else w.reshape(w.shape[0], -1)


def mask_by_hand(layer: nn.Module, pattern: str, kw: dict) -> torch.Tensor:
    """A ``pattern`` mask at density 0.5 on ``layer``'s view, attached weight-shaped."""
    view = get_pattern(pattern, **kw).compute_mask(torch.rand(view_of(layer).shape), 0.5)
    w = layer.weight
    raw = view.t().contiguous() if isinstance(layer, Conv1D) else view.reshape(w.shape)
    parametrize.register_parametrization(layer, "weight",
                                         WeightMask(raw, {"patterns": [{"name": pattern}]}))
    return raw


def reference(layer: nn.Module, raw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The masked layer computed by hand in float64."""
    from spruce.masks import unparametrized
    plain = unparametrized(layer)
    w, b = (plain.weight.detach() * raw).double(), plain.bias.detach().double()
    if isinstance(layer, Conv1D):
        return x.double() @ w + b
    return F.conv1d(x.double(), w, b, plain.stride, plain.padding, plain.dilation)


LAYERS = {"Conv1D": (lambda: Conv1D(12, 8), lambda: torch.randn(3, 5, 8)),
          "Conv1d": (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2),
                     lambda: torch.randn(2, 4, 17)),
          "Conv1d_unbatched": (lambda: nn.Conv1d(4, 6, 3), lambda: torch.randn(4, 9))}


@pytest.mark.parametrize("backend,pattern,kw", CASES)
@pytest.mark.parametrize("kind", list(LAYERS))
def test_backend_equals_the_dense_masked_reference(kind, backend, pattern, kw):
    make_layer, make_x = LAYERS[kind]
    layer = make_layer()
    raw = mask_by_hand(layer, pattern, kw)
    model = nn.Sequential(layer).eval()
    x = make_x()
    fast = spruce.convert(model, backend, example_input=x)  # layer checked against dense
    row = fast.spruce_report.rows[0]
    assert row.backend == backend and row.kind == kind.split("_")[0] and row.reason is None
    assert row.rel_error is not None and row.rel_error < 1e-5
    with torch.no_grad():
        torch.testing.assert_close(fast(x).double(), reference(layer, raw, x), rtol=1e-5,
                                   atol=1e-5)
    mod = fast[0]
    torch.testing.assert_close(mod.weight, layer.weight.detach())  # original shape, masked
    assert mod.weight.shape == layer.weight.shape
    from spruce.masks import unparametrized
    assert torch.equal(mod.bias, unparametrized(layer).bias)
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                 "dilation", "groups", "nf", "nx"):
        if hasattr(layer, attr):
            assert getattr(mod, attr) == getattr(layer, attr), attr


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv1d(4, 8, 3, padding=1)
        self.b = nn.Conv1d(8, 6, 3, stride=2)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.b(torch.relu(self.a(x))).mean(-1))


def gpt2():
    cfg = tf.GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=2, n_positions=16,
                        bos_token_id=0, eos_token_id=0)
    return tf.GPT2LMHeadModel(cfg).eval(), {"input_ids": torch.randint(0, 100, (2, 8))}


@pytest.mark.parametrize("backend,pattern,kw", CASES + [("auto", "group", {})])
@pytest.mark.parametrize("which", ["gpt2", "conv1d"])
def test_models_with_the_new_layer_types_convert_run_and_reload(which, backend, pattern, kw,
                                                                tmp_path):
    model, x = gpt2() if which == "gpt2" else (Conv1dNet().eval(), torch.randn(2, 4, 16))
    make = gpt2 if which == "gpt2" else Conv1dNet
    for layer in [m for m in model.modules() if isinstance(m, (Conv1D, nn.Conv1d))]:
        mask_by_hand(layer, pattern, kw)
    options = {}
    if backend == "auto":
        from spruce.auto import AutoTiming
        options["timing"] = AutoTiming(warmup=0, min_runs=1, min_time_s=0.0, max_time_s=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = spruce.convert(model, backend, example_input=x, **options)

    def run(m):
        out = m(**x) if isinstance(x, dict) else m(x)
        return out if isinstance(out, torch.Tensor) else out.logits

    with torch.no_grad():
        torch.testing.assert_close(run(fast), run(model), rtol=1e-4, atol=1e-5)
    rows = fast.spruce_report.rows
    assert {r.kind for r in rows} == ({"Conv1D"} if which == "gpt2" else {"Conv1d"})
    assert all(r.backend == backend or r.reason or backend == "auto" for r in rows)
    loaded = spruce.load(spruce.save(fast, tmp_path / "m.safetensors"), make()
                         if which == "conv1d" else make()[0])
    with torch.no_grad():
        torch.testing.assert_close(run(loaded), run(fast))
