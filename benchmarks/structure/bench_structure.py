"""Structural compaction against dense and against the floor: a pruned model made smaller.

Question: when ``spruce.prune(..., pattern="channel", scope="coupled")`` removes half of
every coupled channel group and ``spruce.compact`` turns the result into a smaller dense
model, how fast is that model next to the best dense path, and next to the *floor* — the
same architecture built directly at the smaller widths?

For each model of a preset (``structure_models.PRESETS``; ``h200``: ResNet-18/50 at 224²
and batch 64, BERT-base at 128 tokens and ViT-B/16 at 224² with batch 64, a Llama-style
1B at batch 8 × 512 tokens, fp16 on CUDA, channels-last for CNNs):

1. the dense model, randomly initialised with O(1) activations (ResNets: BatchNorm
   statistics from random inputs in train mode); a row whose fp32 reference output is
   degenerate (not finite, tiny, the same for every sample) is flagged, not reported;
2. per variant (``coupled``; for CNNs also ``inner``, residual streams kept whole) a copy
   pruned to 50% with ``scope="coupled"`` and compacted;
3. the floor (``structure_models``: built from a config, or from the compacted model's
   shapes with fresh contiguous weights where the family cannot be, as the row says);
4. timings in one run (``structure_timing``): dense eager, dense CUDA graph, dense
   ``torch.compile`` + CUDA graph; compacted eager and compiled + graph; floor compiled +
   graph. Ratios are to the fastest dense path (and, beside it, eager to eager); FLOPs
   (``FlopCounterMode``) give the FLOP ratio beside them;
5. the relative error of every timed compacted output against the pruned fp32 model;
6. ``--profile``: kernel time by class (GEMM/conv, norm, elementwise, attention, layout)
   of the dense and compacted models, eager and compiled, printed and kept in the JSON.

``--output DIR`` writes (merges into) ``DIR/results.json`` after every model;
``--merge A/results.json B/results.json --output DIR`` gathers the files of separate runs
into ``DIR/results.json`` (a model measured again replaces its earlier rows);
``--render DIR`` writes ``DIR/README.md``, the table of ``DIR/results.json``. A stage that
fails (compaction missing, out of memory) is recorded in its row and the run goes on.

    PYTHONPATH=src python benchmarks/structure/bench_structure.py --preset cpu-smoke \\
        --output /tmp/structure --render /tmp/structure
    PYTHONPATH=src python benchmarks/structure/bench_structure.py --preset h200 \\
        --models resnet18,resnet50 --output $OUT/structure

Run time: every variant compiles once (dense once per model); one model of ``h200`` per
run takes under 8 minutes (ResNet-50, the slowest, compiles five times;
``--variants coupled`` halves that).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import shlex
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

import spruce
from spruce.bench import environment
from spruce.errors import SpruceError
from structure_metrics import (add_ratios, call, count_flops, degenerate, params, rel_error,
                               weight_shapes)
from structure_models import (FAMILIES, PRESETS, VARIANTS, Case, Family, Variant, build,
                              fresh_copy, inputs_for, kept, reference, timed_copy)
from structure_profile import render_split
from structure_render import merge, merge_files, render
from structure_timing import Measured, Plan, compiled, eager, graph

ERR_TOL = {torch.float16: 5e-2, torch.bfloat16: 5e-2, torch.float32: 1e-4}


# ---------------------------------------------------------------------------- stages

def attempt(row: dict, stage: str, fn, *args, **kwargs):
    """``fn(*args)``, or None with the error recorded in ``row["errors"][stage]``."""
    t0 = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - a failed stage is a result; the run goes on
        msg = f"{type(e).__name__}: {e}"
        row.setdefault("errors", {})[stage] = msg[:600]
        print(f"  [{row['model']}/{row.get('variant', '-')}] {stage} failed: {msg[:300]}",
              file=sys.stderr, flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None
    finally:
        row.setdefault("stage_s", {})[stage] = round(time.perf_counter() - t0, 2)


def measure_dense(model: nn.Module, inputs: list, plan: Plan, row: dict) -> None:
    """Dense eager, CUDA graph (CUDA only) and compiled; fields into ``row``."""
    cuda = plan.device.type == "cuda"
    paths = {"eager": lambda: eager(model, inputs, plan),
             "graph": (lambda: graph(lambda x: call(model, x), inputs, plan)) if cuda else None,
             "compiled": lambda: compiled(model, inputs, plan)}
    for name, run in paths.items():
        m = attempt(row, f"dense {name}", run) if run else None
        _record(row, f"dense_{name}", m)
    row["flops_dense"] = attempt(row, "dense flops", count_flops, model, inputs[0])
    row["params_dense"] = params(model)


def _record(row: dict, prefix: str, m: Measured | None) -> None:
    row[f"{prefix}_ms"] = m.ms if m else None
    if m is None:
        return
    row.setdefault("methods", {})[prefix] = m.method
    if m.compile_s is not None:
        row.setdefault("compile_s", {})[prefix] = round(m.compile_s, 2)
    if m.split is not None:
        row.setdefault("profile", {})[prefix.replace("_", "/")] = m.split


@dataclass(frozen=True)
class Context:
    """What every variant of one model shares."""

    plan: Plan
    dtype: torch.dtype            # of the timed models
    density: float                # fraction of every coupled group kept
    inputs: list                  # rotating timed input buffers
    ref_in: Any                   # inputs[0] in fp32: what the references see
    channels_last: bool

    @property
    def calib(self) -> torch.Tensor | None:
        """The input BatchNorm calibration draws its shapes from (image models)."""
        return self.ref_in if isinstance(self.ref_in, torch.Tensor) else None


def run_variant(case: Case, fam: Family, variant: Variant, dense32: nn.Module, ctx: Context,
                base: dict) -> dict:
    """One row: prune a copy of ``dense32``, compact it, time it and its floor."""
    row = {**copy.deepcopy(base), "variant": variant.name, "errors": {}, "notes": []}
    pruned = copy.deepcopy(dense32)
    kwargs = dict(pattern="channel", density=ctx.density, scope="coupled",
                  example_input=ctx.ref_in, exclude=list(fam.exclude), **variant.prune_kwargs)
    row["prune_call"] = {k: v for k, v in kwargs.items() if k != "example_input"}
    small = ref = None
    if attempt(row, "prune", spruce.prune, pruned, **kwargs) is not None:
        ref = attempt(row, "pruned reference", reference, pruned, ctx.ref_in)
    if ref is not None:
        flag = degenerate(ref)
        row["degenerate"] = row.get("degenerate") or (flag and f"pruned reference: {flag}")
        small = attempt(row, "compact", spruce.compact, pruned, example_input=ctx.ref_in)
    del pruned
    if small is not None:
        _measure_compacted(row, small, ref, ctx)
    _measure_floor(row, case, fam, variant, small, ctx)
    return add_ratios(row)


def _measure_compacted(row: dict, small: nn.Module, ref: torch.Tensor, ctx: Context) -> None:
    fast = timed_copy(small, ctx.dtype, ctx.channels_last)
    row["params_compacted"] = params(fast)
    row["flops_compacted"] = attempt(row, "compacted flops", count_flops, fast, ctx.inputs[0])
    row["shapes_compacted"] = weight_shapes(fast)
    errs = {}
    for name, run in (("eager", eager), ("compiled", compiled)):
        m = attempt(row, f"compacted {name}", run, fast, ctx.inputs, ctx.plan)
        _record(row, f"compacted_{name}", m)
        if m is not None:
            errs[name] = rel_error(m.output, ref)
    row["rel_err"] = errs
    row["max_rel_err"] = max(errs.values()) if errs else None
    row["err_tol"] = ERR_TOL.get(ctx.dtype, 5e-2)
    row["err_ok"] = row["max_rel_err"] is not None and row["max_rel_err"] <= row["err_tol"]


def _measure_floor(row: dict, case: Case, fam: Family, variant: Variant,
                   small: nn.Module | None, ctx: Context) -> None:
    keep = lambda n: kept(n, ctx.density)  # noqa: E731
    floor = attempt(row, "floor", build, fam, lambda: fam.floor(case, variant, keep),
                    ctx.plan.device, ctx.calib)
    row["floor_source"] = "config"
    if floor is None and "floor" not in row["errors"]:
        row["floor_source"] = "compacted shapes"
        row["notes"].append(fam.floor_note)
        if small is None:
            row["errors"]["floor"] = "the floor takes the compacted model's shapes, and " \
                                     "there is no compacted model (see the errors above)"
            return
        floor = fresh_copy(small)
    if floor is None:
        return
    floor = timed_copy(floor, ctx.dtype, ctx.channels_last)
    row["params_floor"] = params(floor)
    row["flops_floor"] = attempt(row, "floor flops", count_flops, floor, ctx.inputs[0])
    if "shapes_compacted" in row:
        row["floor_same_shapes"] = weight_shapes(floor) == row["shapes_compacted"]
        if not row["floor_same_shapes"]:
            row["notes"].append(f"the floor's weights differ in shape from the compacted "
                                f"model's (params {row['params_floor']} vs "
                                f"{row['params_compacted']})")
    _record(row, "floor_compiled", attempt(row, "floor compiled", compiled, floor,
                                           ctx.inputs, ctx.plan))
    del floor


def run_case(case: Case, plan: Plan, dtype: torch.dtype, density: float,
             variants: list[str]) -> list[dict]:
    """Every row of one model: the dense paths once, then one row per variant."""
    fam = FAMILIES[case.family]
    inputs, ref_in = inputs_for(case, fam, dtype, plan.device)
    ctx = Context(plan, dtype, density, inputs, ref_in, fam.channels_last)
    base = {"model": case.name, "family": case.family, "batch": case.batch,
            "input": fam.describe(case), "dtype": str(dtype).removeprefix("torch."),
            "device": str(plan.device), "density": density,
            "compiled_mode": None if not plan.compile else
            "compile+graph" if plan.device.type == "cuda" else "compile"}
    dense32 = attempt(base, "build", build, fam, lambda: fam.build(case), plan.device,
                      ctx.calib)
    ref = None if dense32 is None else attempt(base, "reference", reference, dense32, ref_in)
    if ref is None:
        return [{**base, "variant": v} for v in variants]
    flag = degenerate(ref)
    base["degenerate"] = flag and f"dense reference: {flag}"
    dense = timed_copy(dense32, dtype, fam.channels_last)
    measure_dense(dense, inputs, plan, base)
    base["dense_rel_err"] = attempt(base, "dense error", _dense_error, dense, inputs[0], ref)
    del dense
    rows = [run_variant(case, fam, VARIANTS[v], dense32, ctx, base) for v in variants]
    for row in rows:
        row.pop("shapes_compacted", None)
    return rows


def _dense_error(model: nn.Module, x: Any, ref: torch.Tensor) -> float:
    """The timed dtype's own error on the dense model: the scale compacted errors sit on."""
    return rel_error(reference(model, x), ref)


# ------------------------------------------------------------------------------ main

def select(preset_name: str, models: str | None, variants: str | None):
    """The preset and its cases named by ``--models``, with the variants to run."""
    if preset_name not in PRESETS:
        raise SpruceError(f"unknown preset {preset_name!r}; valid: {', '.join(PRESETS)}",
                          field="--preset")
    preset = PRESETS[preset_name]
    names = [c.name for c in preset.cases]
    wanted = names if models is None else [m.strip() for m in models.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in names]
    if unknown:
        raise SpruceError(f"no model {', '.join(unknown)} in preset {preset_name!r}; valid: "
                          f"{', '.join(names)}", field="--models")
    only = None if variants is None else [v.strip() for v in variants.split(",")]
    bad = [v for v in only or [] if v not in VARIANTS]
    if bad:
        raise SpruceError(f"unknown variant {', '.join(bad)}; valid: {', '.join(VARIANTS)}",
                          field="--variants")
    cases = [c for c in preset.cases if c.name in wanted]
    return preset, [(c, [v for v in c.variants if only is None or v in only]) for c in cases]


def versions() -> dict[str, str | None]:
    out = {}
    for name in ("transformers", "triton"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def load_results(folder: Path) -> dict | None:
    path = folder / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_results(folder: Path, results: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(folder / "results.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="h200", help=f"one of {', '.join(PRESETS)}")
    ap.add_argument("--models", help="comma-separated names of the preset (default: all)")
    ap.add_argument("--variants", help=f"comma-separated, of {', '.join(VARIANTS)} "
                                       "(default: each model's own)")
    ap.add_argument("--density", type=float, default=0.5, help="fraction of channels kept")
    ap.add_argument("--device", help="override the preset's device (cuda or cpu)")
    ap.add_argument("--min-time-s", type=float, help="override the timed seconds per path")
    ap.add_argument("--profile", action="store_true", help="kernel-time split by class")
    ap.add_argument("--no-compile", action="store_true",
                    help="skip the torch.compile paths (a quick dry run of everything else)")
    ap.add_argument("--output", type=Path, help="folder to write (merge) results.json into")
    ap.add_argument("--render", type=Path, help="folder whose results.json becomes README.md")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="RESULTS_JSON",
                    help="merge these results.json files (other runs) into "
                         "--output DIR instead of measuring")
    args = ap.parse_args(argv)
    if args.output is None and args.render is None:
        ap.error("give --output DIR (measure), --render DIR (table), or both")
    if args.merge and args.output is None:
        ap.error("--merge needs --output DIR: the folder whose results.json takes the runs")
    return args


def measure(args: argparse.Namespace) -> None:
    preset, chosen = select(args.preset, args.models, args.variants)
    device = torch.device(args.device or preset.device)
    dtype = preset.dtype if device.type == "cuda" else torch.float32
    if device.type == "cpu" and preset.threads:
        torch.set_num_threads(preset.threads)
    torch.backends.cuda.matmul.allow_tf32 = False   # fp32 references in full fp32
    torch.backends.cudnn.allow_tf32 = False
    plan = Plan(device, preset.min_runs, args.min_time_s or preset.min_time_s,
                profile=args.profile, compile=not args.no_compile)
    if args.profile and device.type == "cpu":
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True  # Inductor's CPU kernels profiled
    old = load_results(args.output)
    run = {"env": {**environment(device), **versions(), "dtype": str(dtype)},
           "command": shlex.join([sys.executable, *sys.argv]), "preset": preset.name,
           "rows": []}
    for case, variants in chosen:
        t0 = time.perf_counter()
        print(f"{case.name}: {', '.join(variants)}", flush=True)
        try:
            rows = run_case(case, plan, dtype, args.density, variants)
        except Exception as e:  # noqa: BLE001 - record it and go on to the next model
            rows = [{"model": case.name, "variant": v, "errors": {"case": f"{type(e).__name__}: "
                                                                   f"{e}"[:600]}}
                    for v in variants]
            print(f"  [{case.name}] failed: {e}", file=sys.stderr, flush=True)
        for row in rows:
            row["case_s"] = round(time.perf_counter() - t0, 1)
        run["rows"] += rows
        write_results(args.output, merge(old, run))
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(render({"runs": [run]}))
    splits = {f"{r['model']}/{r['variant']} {k}": v for r in run["rows"]
              for k, v in r.get("profile", {}).items()}
    if splits:
        print(render_split(splits))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.merge:
        results = load_results(args.output)
        for path in args.merge:
            results = merge_files(results, json.loads(path.read_text()))
        write_results(args.output, results)
    elif args.output is not None:
        measure(args)
    if args.render is not None:
        results = load_results(args.render)
        if results is None:
            raise SpruceError("has no results.json; run with --output first",
                              path=args.render, field="--render")
        (args.render / "README.md").write_text(render(results))
        print(f"wrote {args.render / 'README.md'}")


if __name__ == "__main__":
    main()
