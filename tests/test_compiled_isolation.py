"""Compiled models stay compiled: each gets its own Dynamo cache (no eager fallback after
``recompile_limit`` compilations of one class), is compiled once for spruce's own timing,
is timed on inputs in the example's layout, and never holds a layer torch.compile cannot
trace unless the caller asked for that backend by name."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

import spruce
from spruce.auto import AutoTiming
from spruce.auto_model import example_batches
from spruce.bench import time_fn
from spruce.compiled import CompiledModule

FULL = AutoTiming(warmup=1, min_runs=3, min_time_s=0.0, abandon=None)


class Net(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.a, self.b = nn.Linear(16, width), nn.Linear(width, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def unique_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def test_many_models_of_one_class_each_compile():
    """Twelve widths of one class: with one shared ``forward`` cache the ninth would hit
    Dynamo's recompile limit (8) and silently run eagerly; here that limit is a failure."""
    x = torch.randn(2, 16)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        for width in range(8, 20):
            torch.manual_seed(width)
            model = Net(width).eval()
            before = unique_graphs()
            fast = CompiledModule(model, "default", x, 1e-4)
            assert unique_graphs() == before + 1, width  # compiled, not run eagerly
            with torch.no_grad():
                torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


def test_a_compiled_model_is_compiled_once_for_spruces_timing():
    model, x = Net(32).eval(), torch.randn(4, 16)
    torch._dynamo.reset()
    fast = CompiledModule(model, "default", x, 1e-4)  # compiled and checked here
    before = unique_graphs()
    time_fn(fast, [x, x.clone()], device="cpu", warmup=1, min_runs=2, min_time_s=0.0)
    assert unique_graphs() == before  # timing reuses it: no second compilation


def test_auto_leaves_out_backends_torch_compile_cannot_trace():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    spruce.prune(model, "element", 0.1)
    x = torch.randn(16, 32)
    eager = spruce.convert(model, "auto", example_input=x, timing=FULL)
    fast = spruce.convert(model, "auto", example_input=x, compile=True, timing=FULL)
    for name, choice in fast.spruce_plan.layers.items():
        assert "csr" in eager.spruce_plan.layers[name].times_ms  # a candidate eagerly
        assert "csr" not in choice.times_ms and choice.choice != "csr"
        assert choice.errors["csr"].startswith("left out for a compiled model: torch.compile")
        assert choice.key.endswith("|compiled")  # an eager plan is not reused for it
        assert not eager.spruce_plan.layers[name].key.endswith("|compiled")
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


def test_a_graph_breaking_backend_named_by_the_caller_warns():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    spruce.prune(model, "element", 0.5)
    x = torch.randn(16, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast = spruce.convert(model, "csr", example_input=x, compile=True)
    said = [str(w.message) for w in caught if "splits the compiled graph" in str(w.message)]
    assert len(said) == 1 and "2 layer(s) (0, 2) run on csr" in said[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spruce.convert(model, "dense", example_input=x, compile=True)
    assert not [w for w in caught if "splits the compiled graph" in str(w.message)]
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


def test_whole_model_timing_inputs_keep_the_examples_layout():
    x = torch.randn(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    batches = example_batches(x, torch.float32, torch.device("cpu"))
    assert len(batches) >= 2
    for i, b in enumerate(batches):
        assert b.is_contiguous(memory_format=torch.channels_last) and b.stride() == x.stride()
        assert torch.equal(b, x.roll(i % 4, 0))
    tokens = {"input_ids": torch.arange(12).reshape(3, 4)}
    for i, b in enumerate(example_batches(tokens, torch.float32, torch.device("cpu"))):
        assert b["input_ids"].dtype == torch.long
        assert torch.equal(b["input_ids"], tokens["input_ids"].roll(i % 3, 0))



def test_a_copy_of_a_compiled_model_runs_its_own_weights():
    model, x = Net(32).eval(), torch.randn(4, 16)
    fast = CompiledModule(model, "default", x, 1e-4)
    clone = copy.deepcopy(fast)
    assert clone.module is not model and clone.mode == fast.mode
    with torch.no_grad():
        clone.module.b.bias.add_(1.0)
        torch.testing.assert_close(clone(x), fast(x) + 1.0, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


def test_the_compiled_dense_baseline_leaves_other_compiled_models_alone():
    """``dense_rows``' compiled path compiles each model in its own cache: twelve widths of
    one class stay under the recompile limit, and a model compiled before is not reset."""
    from spruce.bench.baseline import compiled_caller

    x = torch.randn(2, 16)
    earlier = CompiledModule(Net(8).eval(), "default", x, 1e-4)
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        for width in range(8, 20):
            model = Net(width).eval()
            fn, secs = compiled_caller(model, x)
            assert secs > 0
            with torch.inference_mode():
                torch.testing.assert_close(fn(x), model(x), rtol=1e-4, atol=1e-5)
    before = unique_graphs()
    with torch.inference_mode():
        earlier(x)
    assert unique_graphs() == before  # still compiled: no second compilation
