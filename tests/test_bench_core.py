"""bench core: per-run timing statistics, input rotation, error rows, results files.

No test asserts a speed: timings are checked for consistency, not for being fast.
"""

import csv
import json
import math
import os

import pytest
import torch

import spruce
from spruce.bench import (
    ENV_KEYS,
    RECORD_FIELDS,
    RESULTS_SCHEMA,
    Record,
    ResultsWriter,
    Timing,
    environment,
    make_inputs,
    measure,
    rotation_size,
    time_fn,
    validate,
)

FAST = {"device": "cpu", "warmup": 2, "min_runs": 20, "min_time_s": 0.02, "threads": 1}


def _matmul():
    w = torch.randn(256, 256)
    return (lambda x: x @ w), make_inputs((256, 256), n=4)


# ---------------------------------------------------------------------------- Timing

def test_quantiles_and_spread_from_known_samples():
    t = Timing.from_samples([float(v) for v in range(1, 12)], "events")   # 1..11
    assert (t.median_ms, t.p10_ms, t.p90_ms, t.mean_ms, t.runs) == (6.0, 2.0, 10.0, 6.0, 11)
    assert t.spread == pytest.approx(8.0 / 6.0)
    one = Timing.from_samples([3.0], "events")
    assert one.median_ms == one.p10_ms == one.p90_ms == 3.0 and one.spread == 0.0
    with pytest.raises(ValueError, match="no samples"):
        Timing.from_samples([], "events")


def test_cpu_matmul_statistics_are_consistent():
    fn, xs = _matmul()
    a = time_fn(fn, xs, **FAST)
    b = time_fn(fn, xs, **FAST)
    for t in (a, b):
        assert t.method == "torch.utils.benchmark"
        assert t.median_ms > 0 and math.isfinite(t.median_ms)
        assert 0 < t.p10_ms <= t.median_ms <= t.p90_ms
        assert t.runs >= FAST["min_runs"]
        assert t.spread >= 0
    assert 0.2 <= a.median_ms / b.median_ms <= 5   # the same workload agrees, loosely


def test_fast_calls_are_grouped_but_still_give_min_runs():
    t = time_fn(lambda x: x, [torch.ones(1)], **FAST)
    assert t.calls_per_sample >= 1 and t.runs >= FAST["min_runs"] and t.median_ms > 0


def test_rotation_reaches_every_buffer_under_inference_mode():
    xs = make_inputs((8, 8), n=5)
    seen, modes = set(), set()

    def fn(x):
        seen.add(next(i for i, b in enumerate(xs) if b is x))
        modes.add(torch.is_inference_mode_enabled())
        return x.sum()
    time_fn(fn, xs, **FAST)
    assert seen == set(range(5)) and modes == {True}
    single = []
    time_fn(lambda x: single.append(x), xs[:1], **FAST)   # one buffer is allowed
    assert all(x is xs[0] for x in single)


def test_time_fn_preconditions():
    with pytest.raises(ValueError, match="at least one input"):
        time_fn(lambda x: x, [], device="cpu")
    with pytest.raises(ValueError, match="cuda_graph"):
        time_fn(lambda x: x, [torch.ones(1)], device="cpu", cuda_graph=True)


def test_threads_are_restored():
    before = torch.get_num_threads()
    time_fn(lambda x: x + 1, [torch.ones(4)], **{**FAST, "threads": 1})
    assert torch.get_num_threads() == before


# ---------------------------------------------------------------------------- inputs

def test_make_inputs_distinct_nonzero_reproducible():
    xs = make_inputs((3, 5), n=4, dtype=torch.float16)
    assert len(xs) == 4
    assert all(x.shape == (3, 5) and x.dtype == torch.float16 for x in xs)
    assert all(bool((x != 0).all()) for x in xs)              # never time zeros
    assert all(not torch.equal(xs[i], xs[j]) for i in range(4) for j in range(i + 1, 4))
    again = make_inputs((3, 5), n=4, dtype=torch.float16)
    assert all(torch.equal(a, b) for a, b in zip(xs, again, strict=True))
    assert not torch.equal(xs[0], make_inputs((3, 5), n=1, dtype=torch.float16, seed=1)[0])


def test_make_inputs_from_tensor_and_default_rotation_size():
    example = torch.zeros(2, 7, dtype=torch.float64)
    xs = make_inputs(example)
    assert 4 <= len(xs) <= 8 and all(x.dtype == torch.float64 and x.shape == (2, 7) for x in xs)
    assert len(make_inputs((2, 7))) == 8                        # tiny: the cap of 8
    assert rotation_size(400 << 20) == 2                         # big: 1 GiB in all at most
    assert 4 <= rotation_size(64 << 20) <= 8


def test_make_inputs_for_hf_dict():
    example = {"input_ids": torch.zeros(2, 16, dtype=torch.long),
               "attention_mask": torch.ones(2, 16, dtype=torch.long),
               "token_type_ids": torch.zeros(2, 16, dtype=torch.long)}
    batches = make_inputs(example, n=3, vocab=5000)
    assert len(batches) == 3
    for b in batches:
        assert set(b) == set(example) and all(b[k].shape == (2, 16) for k in b)
        assert int(b["input_ids"].min()) >= 1000 and int(b["input_ids"].max()) < 5000
        assert torch.equal(b["attention_mask"], example["attention_mask"])
        assert torch.equal(b["token_type_ids"], example["token_type_ids"])
    assert not torch.equal(batches[0]["input_ids"], batches[1]["input_ids"])
    with pytest.raises(ValueError, match="vocab"):
        make_inputs(example, n=1, vocab=500)


# ---------------------------------------------------------------------------- records

def test_record_fields_match_schema_and_dict():
    expected = {"kind", "name", "pattern", "density", "backend", "dtype", "device", "batch",
                "input_shape", "median_ms", "p10_ms", "p90_ms", "runs", "ratio_to_dense",
                "param_ratio", "error", "extra", "device_name", "torch", "spruce", "threads",
                "date"}
    assert set(RECORD_FIELDS) == expected
    record_schema = RESULTS_SCHEMA["properties"]["records"]["items"]
    assert set(record_schema["required"]) == expected == set(record_schema["properties"])
    assert set(Record("layer", "x").to_dict()) == expected
    assert Record("layer", "x", dtype=torch.bfloat16, input_shape=(2, 3)).dtype == "bf16"
    with pytest.raises(ValueError, match="kind"):
        Record("bogus", "x")


def test_measure_fills_every_field():
    fn, xs = _matmul()
    dense = measure("mm-256", fn, xs, dtype=torch.float32, **FAST)
    r = measure("mm-256", fn, xs, pattern="group", density=0.5, backend="dense",
                dtype="fp32", param_ratio=0.5, dense_ms=dense.median_ms, extra={"note": 1},
                **FAST)
    assert r.error is None and r.kind == "layer" and r.device == "cpu"
    assert r.batch == 256 and r.input_shape == [256, 256] and r.runs >= 20
    assert 0 < r.p10_ms <= r.median_ms <= r.p90_ms
    assert r.ratio_to_dense == pytest.approx(r.median_ms / dense.median_ms)
    assert r.extra["method"] == "torch.utils.benchmark" and r.extra["note"] == 1
    assert (r.torch, r.spruce, r.threads) == (torch.__version__, spruce.__version__, 1)
    assert r.device_name and r.date and dense.dtype == "fp32"


def _raiser(exc):
    def fn(x):
        raise exc
    return fn


@pytest.mark.parametrize("fn,kind", [
    (_raiser(RuntimeError("CUDA out of memory")), "RuntimeError"),
    (_raiser(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")),
     "OutOfMemoryError"),
    (lambda x: x @ torch.ones(3, 3), "RuntimeError"),                    # a shape error
    (_raiser(NotImplementedError("no fp16 on cpu")), "NotImplementedError"),
    (_raiser(ValueError("K=27 not divisible by 4")), "ValueError"),
])
def test_impossible_case_gives_error_row(fn, kind):
    r = measure("broken", fn, make_inputs((4, 5), n=2), pattern="vector", **FAST)
    assert r.error.startswith(kind + ":")
    assert (r.median_ms, r.p10_ms, r.p90_ms, r.ratio_to_dense, r.runs) == (None,) * 4 + (0,)
    assert r.pattern == "vector" and r.input_shape == [4, 5]
    validate({"environment": environment("cpu"), "records": [r.to_dict()]})


def test_keyboard_interrupt_is_not_swallowed():
    with pytest.raises(KeyboardInterrupt):
        measure("stop", _raiser(KeyboardInterrupt()), [torch.ones(1)], **FAST)


# ---------------------------------------------------------------------------- files

def _rows(name, n):
    return [Record.error_row(kind="layer", name=f"{name}{i}", device="cpu", error="x")
            if i % 2 else Record("layer", f"{name}{i}", device="cpu", median_ms=1.0 + i,
                                 p10_ms=1.0, p90_ms=2.0 + i, runs=20, extra={"i": i},
                                 input_shape=[2, 3])
            for i in range(n)]


def test_writer_flushes_after_each_record(tmp_path):
    writer = ResultsWriter(tmp_path / "out")
    for i, rec in enumerate(_rows("r", 4)):
        writer.append(rec)
        results = json.loads((tmp_path / "out" / "results.json").read_text())
        validate(results)
        assert [r["name"] for r in results["records"]] == [f"r{j}" for j in range(i + 1)]
        assert set(results["environment"]) == set(ENV_KEYS)
        with open(tmp_path / "out" / "results.csv", newline="") as f:
            lines = list(csv.reader(f))
        assert lines[0] == list(RECORD_FIELDS) and len(lines) == i + 2
    assert lines[1][RECORD_FIELDS.index("input_shape")] == "[2, 3]"
    assert lines[2][RECORD_FIELDS.index("median_ms")] == ""                  # error row
    assert sorted(os.listdir(tmp_path / "out")) == ["results.csv", "results.json"]


def test_interrupted_sweep_keeps_rows(tmp_path):
    rows = _rows("s", 5)
    with pytest.raises(KeyboardInterrupt), ResultsWriter(tmp_path) as writer:
        for i, rec in enumerate(rows):
            if i == 3:
                raise KeyboardInterrupt   # Ctrl-C in the middle of a sweep
            writer.append(rec)
    results = json.loads((tmp_path / "results.json").read_text())
    validate(results)
    assert [r["name"] for r in results["records"]] == ["s0", "s1", "s2"]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_validate_rejects_broken_results(tmp_path):
    good = {"environment": environment("cpu"), "records": [r.to_dict() for r in _rows("v", 2)]}
    validate(good)
    for broken in ({"records": []},
                   {**good, "records": [{**good["records"][0], "runs": "many"}]},
                   {**good, "records": [{**good["records"][0], "kind": "epoch"}]},
                   {**good, "records": [{k: v for k, v in good["records"][0].items()
                                         if k != "median_ms"}]},
                   {**good, "environment": {**good["environment"], "threads": True}}):
        with pytest.raises(ValueError, match="results.json"):
            validate(broken)


def test_nonfinite_timings_are_written_as_null(tmp_path):
    writer = ResultsWriter(tmp_path)
    writer.append(Record("model", "nan", median_ms=float("nan"), ratio_to_dense=float("inf")))
    rec = json.loads((tmp_path / "results.json").read_text())["records"][0]
    assert rec["median_ms"] is None and rec["ratio_to_dense"] is None


# ---------------------------------------------------------------------------- env

def test_environment_has_all_keys():
    env = environment("cpu")
    assert tuple(env) == ENV_KEYS
    assert env["device"] == "cpu" and env["device_name"]
    assert env["torch"] == torch.__version__ and env["spruce"] == spruce.__version__
    assert isinstance(env["threads"], int) and env["threads"] >= 1
    assert env["date"].endswith("+00:00")
    json.dumps(env)


def test_max_time_caps_slow_cases_but_keeps_three_runs():
    import time as _time

    t = time_fn(lambda x: _time.sleep(0.03), [torch.ones(1)], device="cpu", warmup=0,
                min_runs=20, min_time_s=0.0, max_time_s=0.05)
    assert t.runs == 3  # CAPPED_MIN_RUNS, not 20
    assert t.median_ms >= 25
