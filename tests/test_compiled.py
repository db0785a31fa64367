"""``convert(..., compile=...)``: Inductor on the CPU compiles every backend that can be
compiled, outputs equal the eager converted model's, and the group-wise gather is fused
into its producer (read from Inductor's generated code)."""

from __future__ import annotations

import re

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
    assert set(plan.model_ms) == {"dense", "auto"}
    assert plan.model_ms["auto"] <= plan.model_ms["dense"] or \
        all(c.choice == "dense" for c in plan.layers.values())
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
