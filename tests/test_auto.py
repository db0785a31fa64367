"""backend="auto": the choice among CPU backends, the plan file, and bad input."""

import json

import pytest
import torch

import spruce
import spruce.auto as auto
import spruce.auto_model as auto_model
from spruce.auto import AutoTiming, Plan, pick
from tests.conftest import SmallNet

FAST = AutoTiming(warmup=1, min_runs=3, min_time_s=0.0, max_time_s=0.05)


@pytest.fixture
def pruned():
    model = SmallNet()
    spruce.prune(model, "group", 0.5)
    return model, torch.randn(4, 3, 8, 8)


def test_auto_picks_among_cpu_backends_and_matches_dense(pruned):
    model, x = pruned
    fast = spruce.convert(model, "auto", example_input=x, timing=FAST)
    plan = fast.spruce_plan
    assert list(plan.layers) == ["conv1", "conv2", "fc1", "fc2"]
    for c in plan.layers.values():
        assert {"dense", "groupwise", "csr"} <= set(c.times_ms)  # every candidate timed
        assert all(ms > 0 for ms in c.times_ms.values())
        assert c.choice in c.times_ms and c.input_shape is not None
    assert [r.backend for r in fast.spruce_report.rows] == [c.choice for c in plan.layers.values()]
    assert set(plan.model_ms) == {"dense", "auto"}
    # never slower than dense, as measured — unless every layer is dense again
    assert plan.model_ms["auto"] <= plan.model_ms["dense"] or \
        all(c.choice == "dense" for c in plan.layers.values())
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


def test_channels_last_example_is_timed_in_channels_last(pruned, monkeypatch):
    model, x = pruned
    seen: dict[str, bool] = {}
    real = auto._time

    def spy(fn, example, dtype, device, timing, probe=False, inputs=None, **kw):
        if isinstance(example, tuple) and len(example) == 4:  # a conv layer's candidates
            seen[type(fn).__name__] = inputs[0].is_contiguous(memory_format=torch.channels_last)
        return real(fn, example, dtype, device, timing, probe, inputs)
    monkeypatch.setattr(auto, "_time", spy)
    cl = x.contiguous(memory_format=torch.channels_last)
    fast = spruce.convert(model, "auto", example_input=cl, timing=FAST)
    assert seen and all(seen.values())
    assert all(c.key.endswith("channels_last") for n, c in fast.spruce_plan.layers.items()
               if n.startswith("conv"))
    seen.clear()
    spruce.convert(model, "auto", example_input=x, timing=FAST)
    assert seen and not any(seen.values())
    inputs = spruce.bench.make_inputs(cl, n=2)
    assert all(i.is_contiguous(memory_format=torch.channels_last) for i in inputs)


def test_pick_needs_the_margin():
    assert pick({"dense": 1.0, "groupwise": 0.97}, margin=0.05) == "dense"
    assert pick({"dense": 1.0, "groupwise": 0.90, "csr": 2.0}, margin=0.05) == "groupwise"


def test_slower_model_reverts_layers(pruned, monkeypatch):
    model, x = pruned
    times = iter([1.0, 2.0, 1.5, 1.2, 1.1])  # dense model, auto, then after each revert round
    real = auto._time

    def fake(fn, example, dtype, device, timing, probe=False, inputs=None, **kw):
        return next(times) if not isinstance(example, tuple) else real(fn, example, dtype,
                                                                       device, timing, probe,
                                                                       inputs)
    monkeypatch.setattr(auto, "_time", fake)
    monkeypatch.setattr(auto, "pick", lambda times_ms, margin: "groupwise")
    fast = spruce.convert(model, "auto", example_input=x, timing=FAST)
    plan = fast.spruce_plan
    assert all(c.choice == "dense" and c.reverted for c in plan.layers.values())
    assert all(r.backend == "dense" for r in fast.spruce_report.rows)
    torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


def test_a_candidate_far_slower_than_dense_is_probed_once(pruned, monkeypatch):
    model, x = pruned
    calls: list[tuple[str, bool]] = []

    def fake(fn, example, dtype, device, timing, probe=False, inputs=None, **kw):
        name = type(fn).__name__.lower()
        calls.append((name, probe))
        return 50.0 if "csr" in name else 1.0  # csr: 50× dense on its probe
    monkeypatch.setattr(auto, "_time", fake)
    monkeypatch.setattr(auto_model, "check_model", lambda m, fast, *a, **k: fast)
    plan = spruce.convert(model, "auto", example_input=x, timing=FAST).spruce_plan
    for c in plan.layers.values():
        assert c.probed == ["csr"] and c.times_ms["csr"] == 50.0 and c.choice == "dense"
    assert not any("csr" in n and not probe for n, probe in calls)  # never timed in full
    assert any(probe for n, probe in calls if "csr" in n)
    everything = AutoTiming(**{**FAST.__dict__, "abandon": None})
    plan = spruce.convert(model, "auto", example_input=x, timing=everything).spruce_plan
    assert all(not c.probed for c in plan.layers.values())


def test_plan_round_trip_takes_no_timing_runs(pruned, tmp_path, monkeypatch):
    model, x = pruned
    path = tmp_path / "plan.json"
    first = spruce.convert(model, "auto", example_input=x, timing=FAST, plan=path)
    assert json.loads(path.read_text())["format"] == "spruce-plan/1"

    def no_timing(*a, **k):
        raise AssertionError("a cached plan must not time anything")
    monkeypatch.setattr(auto, "time_fn", no_timing)
    again = spruce.convert(model, "auto", example_input=x, plan=path)
    assert {n: c.choice for n, c in again.spruce_plan.layers.items()} == \
        {n: c.choice for n, c in first.spruce_plan.layers.items()}


def test_plan_from_another_device_is_remeasured(pruned, tmp_path):
    model, x = pruned
    path = tmp_path / "plan.json"
    spruce.convert(model, "auto", example_input=x, timing=FAST, plan=path)
    data = json.loads(path.read_text())
    data["device_name"] = "Some Other GPU"
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="measured on Some Other GPU.*measuring again"):
        spruce.convert(model, "auto", example_input=x, timing=FAST, plan=path)
    assert Plan.load(path).device_name != "Some Other GPU"  # rewritten for this machine


def test_mask_change_invalidates_a_layer(pruned, tmp_path, monkeypatch):
    model, x = pruned
    path = tmp_path / "plan.json"
    spruce.convert(model, "auto", example_input=x, timing=FAST, plan=path)
    spruce.prune(model, "group", 0.25)  # new masks: new fingerprints
    calls = []
    real = auto.time_fn
    monkeypatch.setattr(auto, "time_fn", lambda *a, **k: calls.append(1) or real(*a, **k))
    spruce.convert(model, "auto", example_input=x, timing=FAST, plan=path)
    assert calls


def test_corrupt_plan_and_wrong_model(pruned, tmp_path):
    model, x = pruned
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="plan file .*bad.json is unreadable or corrupt"):
        spruce.convert(model, "auto", example_input=x, plan=bad)
    path = tmp_path / "plan.json"
    spruce.convert(model, "auto", example_input=x, timing=FAST, plan=path)
    data = json.loads(path.read_text())
    data["layers"]["fc1"]["view"] = [99, 99]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="layer 'fc1' has view \\[99, 99\\]"):
        spruce.convert(model, "auto", example_input=x, plan=path)


def test_auto_needs_an_example_input(pruned):
    with pytest.raises(ValueError, match="needs example_input"):
        spruce.convert(pruned[0], "auto")
