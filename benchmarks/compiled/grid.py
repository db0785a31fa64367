"""Is a pruned model faster than the best dense model its user could run?

For every model × pattern × kept fraction: the dense model is timed three ways in the same
run — eager, replayed as a CUDA graph, and ``torch.compile``d + CUDA graph — and spruce's
model is timed the way ``spruce.convert(..., compile=True)`` hands it back:

- ``auto``: ``convert(pruned, "auto", compile=True)`` — per-layer measured backends, the
  whole model judged compiled against compiled dense;
- ``compact``: ``convert(pruned, "auto", compile=True, compact=True)`` — ``spruce.compact``
  first (units every reader pruned become smaller dense layers), then the same ``auto``,
  kept only if not slower than the uncompacted dense twin (group and channel patterns).

Every timed output is checked against the pruned fp32 model on the same input (relative
error); a reference output that is degenerate (tiny, non-finite, the same for every
sample) flags the row instead of reporting a speed-up. Ratios are to the fastest dense
path, timed again right after each row (``best_dense_ms_now``: a machine whose speed drifts
over a long run — a shared CPU — does not bias them), and, beside it, to eager dense.

    PYTHONPATH=src:benchmarks/compiled python benchmarks/compiled/grid.py \\
        --models bert_base,vit_b16 --patterns group --output results/h200/compiled
    python benchmarks/compiled/grid.py --render results/h200/compiled

Rows are written to ``results.json`` as they finish (a stopped run keeps them);
``--budget-s`` stops starting new rows after that many seconds and lists the rest as not
run.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import spruce
from grid_models import BATCH, MODELS, Entry
from grid_render import render
from spruce.bench import make_inputs, time_fn
from spruce.bench.baseline import calibrate_batchnorm, call, degenerate
from spruce.compiled import finish_model, unwrap
from spruce.graphs import CudaGraphModule

PATTERNS = ("element", "2:4", "block", "group", "channel")
KEPT = (0.75, 0.5, 0.25)


def first_tensor(out: Any) -> torch.Tensor:
    while not isinstance(out, torch.Tensor):
        out = out[0] if isinstance(out, (tuple, list)) else \
            out.last_hidden_state if hasattr(out, "last_hidden_state") else \
            next(iter(out.values()))
    return out


def rel_error(out: Any, ref: torch.Tensor) -> float:
    out = first_tensor(out).detach().double().cpu()
    ref = ref.detach().double().cpu()
    if out.shape != ref.shape:
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def timed_ms(fn, inputs: list, device: torch.device, min_time_s: float) -> float:
    return time_fn(lambda x: call(fn, x), inputs, device=device, warmup=3, min_runs=20,
                   min_time_s=min_time_s).median_ms


def to_fp32(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: to_fp32(v) for k, v in x.items()}
    return x.float() if x.is_floating_point() else x


BLOCK = (32, 32)


def smaller_than_block(model: nn.Module) -> list[str]:
    """Layers whose 2-D view (out × in·kh·kw) cannot hold one block: left dense."""
    return [name for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d))
            and (m.weight.shape[0] < BLOCK[0] or m.weight[0].numel() < BLOCK[1])]


def prune_kwargs(pattern: str, entry: Entry, model: nn.Module) -> dict[str, Any]:
    kw: dict[str, Any] = {"exclude": list(entry.exclude)}
    if pattern == "block":
        kw["block"] = BLOCK
        kw["exclude"] += smaller_than_block(model)  # VGG's first conv: a 64 × 27 view
    if pattern == "group" and entry.channels_last:
        kw["unit"] = "channel"  # whole input channels of a conv: a smaller dense conv
    return kw


class Subject:
    """One model on the device: fp32 reference copy, timed copy, inputs, dense times."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name, self.entry = name, MODELS[name]
        self.device, self.dtype = torch.device(args.device), getattr(torch, args.dtype)
        batch = args.batch or BATCH.get(name, 64)
        torch.manual_seed(0)
        example = self.entry.example(batch)
        with torch.device(self.device):
            self.model32 = self.entry.build().eval()
        if self.entry.calibrate:
            calibrate_batchnorm(self.model32, [torch.randn_like(example).to(self.device)
                                               for _ in range(4)])
        if self.entry.channels_last:
            example = example.contiguous(memory_format=torch.channels_last)
            self.model32 = self.model32.to(memory_format=torch.channels_last)
        self.inputs = make_inputs(example, dtype=self.dtype, device=self.device)
        self.x32 = to_fp32(self.inputs[0])
        self.batch = batch
        self.best_fn: Any = None  # the fastest dense path, timed again beside every row

    def reference(self, model: nn.Module) -> torch.Tensor:
        with torch.inference_mode():
            return first_tensor(call(model, self.x32)).float().clone()

    def dense(self, args) -> dict[str, Any]:
        ref = self.reference(self.model32)
        row: dict[str, Any] = {"degenerate": degenerate(ref)}
        dense = copy.deepcopy(self.model32).to(self.dtype)
        paths = {"eager": lambda: dense}
        if self.device.type == "cuda":
            paths["graph"] = lambda: CudaGraphModule(dense, self.inputs[0])
        paths["compiled"] = lambda: finish_model(copy.deepcopy(dense), True, None,
                                                 self.inputs[0], 5e-2)
        built = {}
        for path, make in paths.items():
            t0 = time.perf_counter()
            try:
                fn = built[path] = make()
                row[f"dense_{path}_build_s"] = round(time.perf_counter() - t0, 2)
                row[f"dense_{path}_ms"] = timed_ms(fn, self.inputs, self.device,
                                                   args.min_time)
                with torch.inference_mode():
                    row[f"dense_{path}_err"] = rel_error(call(fn, self.inputs[0]), ref)
            except Exception as e:  # a path that fails is a note, not a lost model
                row[f"dense_{path}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
                built.pop(path, None)
                torch._dynamo.reset()
        timed = {p: row[f"dense_{p}_ms"] for p in paths if f"dense_{p}_ms" in row}
        if timed:
            row["best_dense"] = min(timed, key=timed.get)
            row["best_dense_ms"] = timed[row["best_dense"]]
            self.best_fn = built[row["best_dense"]]
        return row


def run_flow(s: Subject, pruned32: nn.Module, flow: str, args) -> dict[str, Any]:
    row: dict[str, Any] = {"flow": flow}
    ref = s.reference(pruned32)
    row["degenerate"] = degenerate(ref)
    t0 = time.perf_counter()
    fast = spruce.convert(pruned32, "auto", dtype=s.dtype, example_input=s.inputs[0],
                          compile=args.compile, compact=flow == "compact")
    row["convert_s"] = round(time.perf_counter() - t0, 2)
    report = getattr(unwrap(fast), "spruce_compaction", None)
    row["compacted"] = report is not None  # compact: kept only when not slower than dense
    if report is not None:
        row["params_before"], row["params_after"] = report.params_before, report.params_after
        row["aligned"] = sum(r.aligned for r in report.rows)  # channels kept for width % 8
        if report.error:
            row["compaction_error"] = report.error
    backends: dict[str, int] = {}
    for r in fast.spruce_report.rows:
        backends[r.backend] = backends.get(r.backend, 0) + 1
    row["layers"] = backends
    plan = fast.spruce_plan
    row["auto_check_ms"] = dict(plan.model_ms)
    row["reverted"] = sum(c.reverted for c in plan.layers.values())
    row["ms"] = timed_ms(fast, s.inputs, s.device, args.min_time)
    if s.best_fn is not None:  # the same dense path again, now: a machine that drifts
        row["best_dense_ms_now"] = timed_ms(s.best_fn, s.inputs, s.device, args.min_time)
    with torch.inference_mode():
        row["rel_err"] = rel_error(call(fast, s.inputs[0]), ref)
    del fast  # its compiled code goes with it (each compiled model has its own cache)
    return row


def cases(patterns, kept) -> list[tuple[str, float]]:
    out = []
    for p in patterns:
        for k in ([0.5] if p == "2:4" else kept):
            out.append((p, k))
    return out


def flows_for(pattern: str, flows: list[str]) -> list[str]:
    return [f for f in flows if f == "auto" or pattern in ("group", "channel")]


def measure(args) -> dict:
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() and args.append else \
        {"environment": environment(args), "models": {}, "rows": []}
    start = time.perf_counter()

    def save():
        path.write_text(json.dumps(results, indent=1, default=str) + "\n")

    for name in args.models.split(","):
        if time.perf_counter() - start > args.budget_s:
            results["rows"].append({"model": name, "not_run": "time budget"})
            save()
            continue
        try:
            s = Subject(name, args)
        except Exception as e:  # a model that cannot be built here is a row, not a lost run
            results["rows"].append({"model": name, "error": f"build: {type(e).__name__}: {e}"
                                    [:300]})
            save()
            print(f"{name}: {results['rows'][-1]['error']}", flush=True)
            continue
        dense = s.dense(args)
        results["models"][name] = {**dense, "batch": s.batch, "source": s.entry.source}
        save()
        print(f"{name}: dense {json.dumps({k: v for k, v in dense.items() if k.endswith('_ms')})}",
              flush=True)
        for pattern, kept in cases(args.patterns.split(","), args.kept):
            pruned32 = copy.deepcopy(s.model32)
            try:
                density = None if pattern == "2:4" else kept
                spruce.prune(pruned32, pattern, density, **prune_kwargs(pattern, s.entry, pruned32))
            except Exception as e:
                results["rows"].append({"model": name, "pattern": pattern, "kept": kept,
                                        "error": f"prune: {type(e).__name__}: {e}"[:300]})
                save()
                continue
            for flow in flows_for(pattern, args.flows.split(",")):
                base = {"model": name, "pattern": pattern, "kept": kept, "flow": flow}
                if time.perf_counter() - start > args.budget_s:
                    results["rows"].append({**base, "not_run": "time budget"})
                    save()
                    continue
                try:
                    row = {**base, **run_flow(s, pruned32, flow, args)}
                except Exception as e:
                    row = {**base, "error": f"{type(e).__name__}: {str(e)[:300]}"}
                    torch._dynamo.reset()
                results["rows"].append(row)
                save()
                print(short(row, dense), flush=True)
            del pruned32
        del s
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return results


def short(row: dict, dense: dict) -> str:
    if "ms" not in row:
        return f"{row['model']} {row['pattern']} {row['kept']} {row['flow']}: " \
               f"{row.get('error') or row.get('not_run')}"
    best = row.get("best_dense_ms_now") or dense.get("best_dense_ms")
    ratio = row["ms"] / best if best else float("nan")
    return (f"{row['model']} {row['pattern']} {row['kept']} {row['flow']}: {row['ms']:.3f} ms"
            f" = {ratio:.2f}x best dense ({dense.get('best_dense')}), err "
            f"{row['rel_err']:.1e}, convert {row['convert_s']} s, layers {row['layers']}")


def environment(args) -> dict[str, Any]:
    env = {"torch": torch.__version__, "device": args.device, "dtype": args.dtype,
           "compile": args.compile, "date": time.strftime("%Y-%m-%d"),
           "command": "python benchmarks/compiled/grid.py " + " ".join(sys.argv[1:])}
    if torch.cuda.is_available() and args.device.startswith("cuda"):
        env["device_name"] = torch.cuda.get_device_name()
    for mod in ("transformers", "torchvision", "triton"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = None
    return env


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--patterns", default=",".join(PATTERNS))
    p.add_argument("--kept", default=list(KEPT), type=lambda s: [float(v) for v in s.split(",")])
    p.add_argument("--flows", default="auto,compact")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--compile", default="default")
    p.add_argument("--batch", type=int, default=None, help="default: 64 (Llama: 8 × 512)")
    p.add_argument("--min-time", type=float, default=0.2)
    p.add_argument("--budget-s", type=float, default=float("inf"))
    p.add_argument("--append", action="store_true", help="add to an existing results.json")
    p.add_argument("--output", default="grid-results")
    p.add_argument("--render", metavar="DIR", help="only write DIR/README.md from its JSON")
    p.add_argument("--merge", nargs="+", metavar="DIR", help="gather these runs' results.json "
                   "into --output (rows in order; a model's dense times from its last run)")
    args = p.parse_args(argv)
    if args.compile in ("true", "True", "1"):
        args.compile = True
    return args


def _measured_elsewhere(row: dict, rows: list[dict]) -> bool:
    """A row not run (time budget) whose model — or model, pattern, kept and flow — another
    run measured: merging drops it."""
    if "not_run" not in row:
        return False
    keys = [k for k in ("model", "pattern", "kept", "flow") if k in row]
    return any("ms" in r and all(r.get(k) == row[k] for k in keys) for r in rows)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.merge:
        runs = [json.loads((Path(d) / "results.json").read_text()) for d in args.merge]
        merged = {"environment": {**runs[0]["environment"], "command": [
            c for r in runs for c in (lambda c: c if isinstance(c, list) else [c])(
                r["environment"]["command"])]}, "models": {}, "rows": []}
        for r in runs:
            merged["models"].update(r["models"])
            merged["rows"] += r["rows"]
        merged["rows"] = [r for r in merged["rows"] if not _measured_elsewhere(r, merged["rows"])]
        Path(args.output).mkdir(parents=True, exist_ok=True)
        (Path(args.output) / "results.json").write_text(json.dumps(merged, indent=1) + "\n")
        args.render = args.output
    if args.render:
        folder = Path(args.render)
        text = render(json.loads((folder / "results.json").read_text()))
        (folder / "README.md").write_text(text)
        print(text)
        return
    results = measure(args)
    text = render(results)
    (Path(args.output) / "README.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
