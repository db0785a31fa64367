"""``convert(..., compile=...)``: Inductor on the CPU compiles every backend that can be
compiled, outputs equal the eager converted model's, and the group-wise gather is fused
into its producer (read from Inductor's generated code)."""

from __future__ import annotations

import dataclasses
import re

import warnings

import pytest
import torch
from torch import nn

import spruce
from spruce.auto import AutoTiming
from spruce.compiled import CompiledModule, unwrap
from spruce.errors import SpruceError

PATTERNS = {"dense": "element", "csr": "element", "bsr": "block", "groupwise": "group",
            "channel": "channel"}
FAST = AutoTiming(warmup=1, min_runs=3, min_time_s=0.0)
FULL = dataclasses.replace(FAST, abandon=None)  # no candidate dropped on a noisy probe call


def small(pattern: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 8)).eval()
    kwargs = {"block": (8, 8)} if pattern == "block" else {}
    spruce.prune(model, pattern, 0.5, **kwargs)
    return model, torch.randn(16, 32)


@pytest.mark.parametrize("backend", sorted(PATTERNS))
def test_every_cpu_backend_compiles_and_matches(backend):
    model, x = small(PATTERNS[backend])
    eager = spruce.convert(model, backend, example_input=x)
    fast = spruce.convert(model, backend, example_input=x, compile=True)
    assert isinstance(fast, CompiledModule) and fast.mode == "default"
    assert [r.backend for r in fast.spruce_report.rows] == \
        [r.backend for r in eager.spruce_report.rows]
    with torch.no_grad():
        torch.testing.assert_close(fast(x), eager(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)
        y = torch.randn(5, 32)  # another shape: compiled again, still right
        torch.testing.assert_close(fast(y), model(y), rtol=1e-4, atol=1e-5)


def test_compile_mode_is_checked_before_any_work():
    model, x = small("group")
    with pytest.raises(SpruceError, match="compile='fast' is not a compile mode"):
        spruce.convert(model, "groupwise", example_input=x, compile="fast")


def test_a_compiled_model_saves_its_eager_model(tmp_path):
    model, x = small("group")
    fast = spruce.convert(model, "groupwise", example_input=x, compile=True)
    assert "module.0.packed" in dict(fast.named_buffers()) or \
        any(k.endswith("packed") for k in fast.state_dict())
    assert unwrap(fast) is fast.module
    path = spruce.save(fast, tmp_path / "m.safetensors")
    fresh = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 8))
    back = spruce.load(path, fresh)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=1e-4, atol=1e-5)


def test_auto_with_compile_times_compiled_models_and_is_right():
    model, x = small("group")
    fast = spruce.convert(model, "auto", example_input=x, compile=True, timing=FAST)
    assert isinstance(fast, CompiledModule)
    plan = fast.spruce_plan
    if any(c.choice != "dense" for c in plan.layers.values()):  # both timed compiled
        assert {"dense", "auto"} <= set(plan.model_ms)
        assert plan.model_ms["auto"] <= plan.model_ms["dense"]
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


def whole_model_times(monkeypatch, times: list[float]) -> list:
    """auto's whole-model timings are ``times`` in order, the last repeating (per-layer
    timing stays real);
    returns the list of the models timed."""
    import spruce.auto as auto

    real, timed = auto._time, []

    def fake(fn, example, dtype, device, timing, probe=False, inputs=None, graph=False):
        if isinstance(example, tuple):  # a layer's input shape: timed for real
            return real(fn, example, dtype, device, timing, probe, inputs, graph)
        timed.append(fn)
        return times[min(len(timed), len(times)) - 1]  # the last one repeats
    monkeypatch.setattr(auto, "_time", fake)
    return timed


def test_auto_with_compile_reverts_a_slower_compiled_model(monkeypatch):
    """auto's pick is groupwise everywhere, then the whole model is timed compiled: slower
    than compiled dense, the layers go back to dense (at most two halving rounds)."""
    import spruce.auto as auto
    import spruce.auto_model as auto_model

    model, x = small("group")
    monkeypatch.setattr(auto, "pick", lambda times, margin: "groupwise")
    # compiled dense 1 ms, every auto try 2 ms
    timed = whole_model_times(monkeypatch, [1.0] + [2.0] * (1 + auto_model.COMPILED_ROUNDS))
    fast = spruce.convert(model, "auto", example_input=x, compile=True, timing=FULL)
    assert all(isinstance(f, CompiledModule) for f in timed)  # every whole-model time
    assert len(timed) == 1 + 1 + auto_model.COMPILED_ROUNDS  # dense, auto, then rounds
    plan = fast.spruce_plan
    assert all(c.choice == "dense" and c.reverted for c in plan.layers.values())
    assert plan.model_ms["auto"] == plan.model_ms["dense"] == 1.0
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


def test_auto_with_compile_hands_back_the_model_it_timed(monkeypatch):
    import spruce.auto as auto

    model, x = small("group")
    monkeypatch.setattr(auto, "pick", lambda times, margin: "groupwise")
    timed = whole_model_times(monkeypatch, [2.0, 1.0])  # auto beats dense: kept as timed
    fast = spruce.convert(model, "auto", example_input=x, compile=True, timing=FULL)
    assert fast is timed[1]  # the compiled model that was timed, not a second compile
    assert {r.backend for r in fast.spruce_report.rows} == {"groupwise"}
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


class NormThenPruned(nn.Module):
    """LayerNorm → a group-pruned Linear; ``residual``: the norm's output is also returned
    (a second consumer, as BERT's residual stream)."""

    def __init__(self, residual: bool):
        super().__init__()
        self.norm, self.proj, self.residual = nn.LayerNorm(64), nn.Linear(64, 48), residual

    def forward(self, x):
        h = self.norm(x)
        y = self.proj(h)
        return (y, h) if self.residual else y


def generated_code(residual: bool) -> tuple[str, torch.Tensor, torch.Tensor]:
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = NormThenPruned(residual).eval()
    spruce.prune(model, "group", 0.5, exclude=["norm"])
    x = torch.randn(8, 64)
    fast = spruce.convert(model, "groupwise", example_input=x)
    assert fast.spruce_report.rows[0].backend == "groupwise"
    torch._dynamo.reset()
    with torch.no_grad():
        out, code = run_and_get_code(torch.compile(fast, dynamic=False), x)
    return "\n".join(code), out, model(x)


@pytest.mark.parametrize("residual", [False, True])
def test_inductor_fuses_the_gather_into_the_norm(residual):
    """One generated kernel computes the LayerNorm and writes the kept columns (and, with a
    second consumer, the full output too); no kernel or extern call gathers on its own;
    the GEMM reads a buffer of the kept width."""
    src, out, ref = generated_code(residual)
    kernels = re.findall(r"^(cpp_fused\w*) = ", src, re.M)
    assert len(kernels) == 1, kernels
    assert "index_select" in kernels[0] and "native_layer_norm" in kernels[0]
    assert "aten.index_select(" not in src and "aten.index(" not in src
    body = src[src.index("def call("):]
    launch = re.search(rf"{kernels[0]}\(([^)]*)\)", body).group(1).split(", ")
    mm = re.search(r"extern_kernels\.(?:mm|addmm)\(([^)]*)\)", body)
    assert mm, "the pruned Linear should be one GEMM"
    gemm_input = [a for a in mm.group(1).split(", ") if a.startswith("buf")][0]
    assert gemm_input in launch  # the GEMM reads what the fused kernel wrote
    alloc = re.search(rf"{gemm_input} = empty_strided_cpu\(\((\d+), (\d+)\)", body)
    assert alloc and (int(alloc.group(1)), int(alloc.group(2))) == (8, 32)  # kept width
    if residual:  # the same kernel also writes the full (8, 64) norm output
        full = [b for b in launch if re.search(rf"{b} = empty_strided_cpu\(\(8, 64\)", body)]
        assert full
    got = out[0] if residual else out
    want = ref[0] if residual else ref
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["groupwise", "dense", "auto"])
def test_compiled_on_cuda_is_captured_or_not_by_measurement(backend):
    from spruce.graphs import CudaGraphModule

    model, x = small("group")
    model, x = model.cuda(), x.cuda()
    extra = {"timing": FAST} if backend == "auto" else {}
    fast = spruce.convert(model, backend, dtype=torch.float16, example_input=x, compile=True,
                          **extra)
    times = fast.spruce_graph_ms
    assert set(times) == {"graph", "no graph"}
    assert isinstance(fast, CudaGraphModule) == (times["graph"] <= times["no graph"])
    assert isinstance(unwrap(fast), nn.Sequential)
    with torch.no_grad():  # the converted model is fp16: so is its input
        out, ref = fast(x.half()).float(), model(x)
    assert ((out - ref).norm() / ref.norm()).item() < 2e-2


@pytest.mark.gpu
def test_compiled_fp16_groupwise_bert_layer_on_cuda_matches():
    model = NormThenPruned(residual=True).cuda().eval()
    spruce.prune(model, "group", 0.5, exclude=["norm"])
    x = torch.randn(64, 64, device="cuda")
    fast = spruce.convert(model, "groupwise", dtype=torch.float16, example_input=x,
                          compile=True, cuda_graph=True)
    with torch.no_grad():
        y, h = fast(x.half())
        ry, rh = model(x)
    assert ((y.float() - ry).norm() / ry.norm()).item() < 2e-2
    assert ((h.float() - rh).norm() / rh.norm()).item() < 2e-2


def test_auto_with_compile_tries_every_layer_sparse_as_a_whole(monkeypatch):
    """Per layer, dense wins (the gather is paid alone); compiled as a whole, the all-sparse
    model is faster: auto hands that back and the plan records both times."""
    import spruce.auto as auto

    model, x = small("group")
    monkeypatch.setattr(auto, "pick", lambda times, margin: "dense")
    # dense (= the per-layer choices), then all sparse
    timed = whole_model_times(monkeypatch, [2.0, 1.0])
    fast = spruce.convert(model, "auto", example_input=x, compile=True, timing=FULL)
    plan = fast.spruce_plan
    assert plan.model_ms == {"dense": 2.0, "auto": 1.0, "all sparse": 1.0, "per layer": 2.0}
    for name, c in plan.layers.items():  # each layer's fastest fully timed sparse candidate
        sparse = {b: ms for b, ms in c.times_ms.items() if b != "dense" and b not in c.probed}
        assert c.choice == min(sparse, key=sparse.get), name
    assert {r.backend for r in fast.spruce_report.rows} == {c.choice for c in plan.layers.values()}
    assert "dense" not in {r.backend for r in fast.spruce_report.rows}
    assert fast is timed[1]
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


def channel_pruned() -> tuple[nn.Module, torch.Tensor]:
    """Coupled channel pruning of the hidden units: compaction removes half of them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 8)).eval()
    x = torch.randn(16, 32)
    spruce.prune(model, "channel", 0.5, scope="coupled", example_input=x)
    return model, x


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in unwrap(m).parameters())


def test_convert_compact_then_backend():
    model, x = channel_pruned()
    plain = spruce.convert(model, "dense", example_input=x)
    small = spruce.convert(model, "dense", example_input=x, compact=True, compile=True)
    assert n_params(small) < n_params(plain)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)


def test_convert_compact_traces_in_the_models_dtype():
    """An example input in the converted dtype (bf16) still compacts the fp32 model."""
    model, x = channel_pruned()
    plain = spruce.convert(model, "dense", dtype=torch.bfloat16, example_input=x.bfloat16())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = spruce.convert(model, "dense", dtype=torch.bfloat16,
                               example_input=x.bfloat16(), compact=True)
    assert not [w for w in caught if "compacted nothing" in str(w.message)]
    assert unwrap(small).spruce_compaction.error is None
    assert n_params(small) < n_params(plain)
    with torch.no_grad():
        torch.testing.assert_close(small(x.bfloat16()).float(), model(x), rtol=5e-2, atol=5e-2)


def test_convert_compact_says_when_nothing_could_be_compacted():
    class Branchy(nn.Module):  # data-dependent control flow: cannot be traced
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(h if bool(h.sum() > 0) else -h)

    net = Branchy()
    spruce.prune(net, "group", 0.5, exclude=["a"])
    with pytest.warns(UserWarning, match="compact=True compacted nothing: cannot trace"):
        spruce.convert(net, "dense", example_input=torch.ones(2, 4), compact=True)


@pytest.mark.parametrize("compacted_ms, kept", [(1.0, True), (3.0, False)])
def test_auto_keeps_the_compacted_model_only_if_not_slower_than_uncompacted_dense(
        monkeypatch, compacted_ms, kept):
    import spruce.auto_compact as ac

    model, x = channel_pruned()
    times = iter([2.0, compacted_ms])  # the uncompacted dense twin, then the compacted model
    monkeypatch.setattr(ac, "whole_ms", lambda *a, **k: next(times))
    fast = spruce.convert(model, "auto", example_input=x, compact=True, timing=FAST)
    plan = fast.spruce_plan
    assert plan.model_ms["compacted"] == compacted_ms
    assert plan.model_ms["dense, uncompacted"] == 2.0
    # auto's own per-layer picks are really timed (a channel backend also has fewer
    # parameters): whether the compacted model was kept is read from its report
    assert hasattr(unwrap(fast), "spruce_compaction") == kept
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


def test_compiled_hf_encoder_runs_unmasked_attention(monkeypatch):
    """Without padding, a compiled BERT passes no mask to SDPA (a materialised mask sends SDPA
    to a slower kernel: transformers 5.17 does that under compile and CUDA graph capture,
    which made BERT's compiled and graph paths 2-3x slower in GPU time than eager)."""
    import torch.nn.functional as F

    seen: list[bool] = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, *args, **kwargs):
        seen.append(attn_mask is None)
        return sdpa(q, k, v, attn_mask, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model = spruce.zoo.build("bert_base", seed=0, num_hidden_layers=2, hidden_size=64,
                             num_attention_heads=2, intermediate_size=128).eval()
    ids = torch.randint(1000, 30000, (2, 12))
    fast = spruce.convert(model, "dense", example_input=ids, compile=True)
    seen.clear()
    with torch.no_grad():
        fast(ids)
    torch._dynamo.reset()
    assert seen and all(seen)
