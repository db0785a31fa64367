"""Group-wise fused kernels on the GPU: checks, ceilings, then latency of every path.

    PYTHONPATH=src python3 benchmarks/kernels/bench_fused.py --out "$OUT"

For each preset × kept ratio × dtype, in one run and on the same rotated random inputs:
dense (cuBLAS ``F.linear`` / cuDNN conv on channels-last), gather+GEMM (the ``groupwise``
backend), the ideal (the ``gemm`` step of ``spruce.bench.layer.groupwise_parts``: the
compacted GEMM alone on inputs gathered beforehand) and ``groupwise_fused`` (autotuned).
fp32 runs with TF32 allowed for cuBLAS, cuDNN and the fused kernel alike (label ``tf32``).
Every fused output is checked against float64 before it is timed. Diagnostics (fp16 only):
the fused kernel with its best config's PREFETCH flipped, with the weight stored (Kp, N),
and a plain Triton GEMM (no gather) on the pre-gathered input — the kernel's own ceiling.

Writes ``results.json``, ``table.md``, ``asm.json`` (registers, spills, instruction counts
of the compiled kernels) to ``--out``; prints the table last.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import copy
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from torch import nn

import spruce
from spruce.backends.dense import Dense
from spruce.backends.groupwise import Groupwise
from spruce.backends.groupwise_fused import FusedGroupwiseConv2d, GroupwiseFused
from spruce.bench.layer import groupwise_parts
from spruce.bench.presets import get_shape
from spruce.bench.timing import make_inputs, time_fn
from spruce.kernels import groupwise_conv2d as gc
from spruce.kernels import groupwise_linear as gl
from spruce.kernels.common import K_MULTIPLE, target
from spruce.masks import get_mask, unparametrized

from plain_gemm import plain_configs, plain_gemm, plain_gemm_kernel  # beside this file

PRESETS = ["bert-base-ffn1", "bert-base-ffn2", "vgg16-fc", "vgg16-conv"]
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
KEPT = [0.75, 0.5, 0.25]
TOL = {"fp16": 2e-2, "bf16": 2e-2, "fp32": 5e-3}


# ------------------------------------------------------------------ ceilings

def ceilings() -> dict:
    """Device-to-device copy bandwidth and cuBLAS GEMM rates, measured here."""
    from triton.testing import do_bench
    out = {}
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_()
    b = torch.empty_like(a)
    ms = do_bench(lambda: b.copy_(a), return_mode="median")
    out["copy_GBps"] = 2 * a.numel() / ms / 1e6
    n = 8192
    for name, dt in DTYPES.items():
        x = torch.randn(n, n, device="cuda").to(dt)
        y = torch.randn(n, n, device="cuda").to(dt)
        ms = do_bench(lambda x=x, y=y: x @ y, return_mode="median")
        out[f"gemm_{name if name != 'fp32' else 'tf32'}_TFLOPs"] = 2 * n**3 / ms / 1e9
    return out


# ------------------------------------------------------------------ parallel precompile

def _linear_tensors(preset: str, dt: torch.dtype, kept: float = 0.5):
    shape = get_shape(preset)
    k = shape.in_features
    kept_idx = torch.randperm(k)[:round(k * kept)].sort().values
    idx, w = gl.pack_linear(torch.randn(shape.out_features, kept_idx.numel()), kept_idx, k)
    x = torch.randn(shape.tokens, k, device="cuda").to(dt)
    return x, idx.cuda(), w.to("cuda", dt), torch.randn(shape.out_features, device="cuda").to(dt)


def _conv_tensors(preset: str, dt: torch.dtype, layout: str, kept: float = 0.5):
    shape = get_shape(preset)
    c_in, ks = shape.in_channels, shape.kernel
    k = c_in * ks * ks
    kept_idx = torch.randperm(k)[:round(k * kept)].sort().values
    taps, w = gc.pack_conv2d(torch.randn(shape.out_channels, kept_idx.numel()), kept_idx,
                             c_in, (ks, ks), (1, 1))
    x = torch.randn(shape.input_shape(), device="cuda").to(dt)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    b = torch.randn(shape.out_channels, device="cuda").to(dt)
    geom = ((ks, ks), (shape.stride,) * 2, (shape.padding,) * 2)
    return x, taps.cuda(), w.to("cuda", dt), b, geom


def _configs_for(kind: str, preset: str, dtype: str, layout: str) -> list[dict]:
    """The configs the wrapper's autotuner will try for this case (as launch kwargs)."""
    shape, dt = get_shape(preset), DTYPES[dtype]
    if kind == "plain":
        m = shape.tokens
        cands = gl.prune_configs(plain_configs(), {"M": m, "x_ptr": torch.empty(0, dtype=dt),
                                                   "Kc": 2 * K_MULTIPLE})
    elif kind == "linear":
        cands = gl.prune_configs(gl.candidates(target(), dt != torch.float32),
                                 {"M": shape.tokens, "x_ptr": torch.empty(0, dtype=dt),
                                  "Kc": 2 * K_MULTIPLE})
    else:
        m = shape.batch * shape.hw * shape.hw
        pairs = dt != torch.float32 and layout == "nhwc"
        cands = gc.prune_configs(gc.candidates(target(), pairs),
                                 {"M": m, "x_ptr": torch.empty(0, dtype=dt)})
    return [c.all_kwargs() for c in cands]


def _compile_task(kind: str, preset: str, dtype: str, layout: str, config: dict) -> int:
    """Launch one config once on random tensors of the case's shapes: fills the on-disk
    Triton cache, so the main process autotunes without compiling."""
    dt = DTYPES[dtype]
    if kind == "conv":
        x, taps, w, b, geom = _conv_tensors(preset, dt, layout)
        gc.groupwise_conv2d(x, taps, w, b, *geom, config=config)
    elif kind == "linear":
        x, idx, w, b = _linear_tensors(preset, dt)
        gl.groupwise_linear(x, idx, w, b, config=config)
    else:
        x, idx, w, _ = _linear_tensors(preset, dt)
        g = x[:, :idx.numel()].contiguous()
        y = torch.empty(g.shape[0], w.shape[0], device="cuda", dtype=dt)
        grid = (triton.cdiv(g.shape[0], config["BLOCK_M"])
                * triton.cdiv(w.shape[0], config["BLOCK_N"]),)
        plain_gemm_kernel[grid](g, w, y, g.shape[0], w.shape[0], g.shape[1], g.stride(0),
                                w.stride(0), y.stride(0), **config)
    torch.cuda.synchronize()
    return 1


def precompile(presets: list[str], dtypes: list[str], diag: bool, workers: int) -> dict:
    """One task per (kernel, preset, dtype, layout, config), run in parallel processes."""
    t0 = time.time()
    tasks = []
    for preset in presets:
        for dtype in dtypes:
            if preset == "vgg16-conv":
                kinds = [("conv", "nhwc"), ("conv", "nchw")]
            else:
                kinds = [("linear", "nk")] + ([("plain", "nk")] if diag and dtype == "fp16" else [])
            for kind, layout in kinds:
                tasks += [(kind, preset, dtype, layout, c)
                          for c in _configs_for(kind, preset, dtype, layout)]
    done, errors = 0, []
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futs = {pool.submit(_compile_task, *t): t for t in tasks}
        for f in cf.as_completed(futs):
            try:
                done += f.result()
            except Exception as e:  # noqa: BLE001 — report, the main run compiles anyway
                errors.append(f"{futs[f][:4]} {futs[f][4]}: {type(e).__name__}: {e}"[:400])
    return {"tasks": len(tasks), "done": done, "seconds": round(time.time() - t0, 1),
            "errors": errors[:20]}


# ------------------------------------------------------------------ one case

def pruned(preset: str, kept: float, seed: int = 0) -> nn.Sequential:
    shape = get_shape(preset)
    net = nn.Sequential(shape.build(seed))
    spruce.prune(net, pattern="group", density=kept, criterion="magnitude")
    return net


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).norm() / ref.norm())


def timed(fn, inputs, runs: int = 30) -> float:
    return time_fn(fn, inputs, device="cuda", min_runs=runs, min_time_s=0.1).median_ms


def _call(fused, x, config):
    """``fused(x)`` through its kernel wrapper with an explicit config."""
    if isinstance(fused, FusedGroupwiseConv2d):
        g = fused.geom
        return gc.groupwise_conv2d(x, fused.taps, fused.packed, fused.bias, g.kernel_size,
                                   g.stride, g.padding, g.dilation, config=config)
    return gl.groupwise_linear(x, fused.kept, fused.packed, fused.bias, config=config)


def bench_case(preset: str, dtype: str, kept: float, inputs: list, diag: bool) -> dict:
    shape, dt = get_shape(preset), DTYPES[dtype]
    conv = shape.kind == "conv"
    net = pruned(preset, kept)
    mask = get_mask(net[0]).cpu()
    plain = copy.deepcopy(unparametrized(net[0]))               # unmasked weight, fp32 CPU
    row = {"preset": preset, "dtype": dtype if dtype != "fp32" else "tf32", "kept": kept}
    with torch.inference_mode():
        dense = shape.build(0).to("cuda", dt).eval()
        layer = copy.deepcopy(plain).to("cuda", dt)
        gw = Groupwise.from_masked(layer, mask)
        fused = GroupwiseFused.from_masked(layer, mask, precision="tf32")
        ref_mod = Dense.from_masked(copy.deepcopy(plain).cuda(), mask).double()
        row["kept_k"] = fused.kept_count
        cl = [x.contiguous(memory_format=torch.channels_last) for x in inputs] if conv else inputs
        if conv:
            dense = dense.to(memory_format=torch.channels_last)
        # correctness of the autotuned fused kernel on a slice (the fp64 reference is slow)
        out = fused(cl[0])
        sl = slice(0, 4) if conv else slice(0, 512)
        ref = ref_mod(inputs[0][sl].double())
        row["rel_err"] = rel_err(out[sl], ref)
        row["ok"] = row["rel_err"] <= TOL[dtype]
        kmod = gc if conv else gl
        tuned = kmod.tuned_kernel(target(), dt != torch.float32)
        row["config"] = str(tuned.best_config)
        best = tuned.best_config.all_kwargs()
        row["dense_ms"] = timed(dense, cl)
        row["gather_gemm_ms"] = timed(gw, inputs)
        steps = {name: (fn, xs) for name, fn, xs in groupwise_parts(gw, inputs)}
        fn, xs = steps["gemm"]
        row["ideal_ms"] = timed(fn, xs)
        row["fused_ms"] = timed(fused, cl)
        if diag:   # the best tile in each fetch mode
            for prefetch, pairs in gl.FETCH_MODES:
                mode = {**best, "PREFETCH": prefetch, "PAIRS": pairs}
                name = "pairs" if pairs else "prefetch" if prefetch else "inloop"
                row[f"mode_{name}_ms"] = timed(lambda x, mode=mode: _call(fused, x, mode), cl)
        if conv:
            row["fused_nchw_ms"] = timed(fused, inputs)
            flat = [g.transpose(1, 2).reshape(-1, g.shape[1]).contiguous() for g in xs]
            del steps, xs
            row["ideal_flat_ms"] = timed(lambda g: F.linear(g, gw.packed), flat)   # (B·L, O)
            del flat
        elif diag:
            pad = fused.packed.shape[1] - fused.kept_count
            gpad = [F.pad(x.index_select(-1, gw.kept), (0, pad)) for x in inputs]
            row["triton_plain_ms"] = timed(lambda g: plain_gemm(g, fused.packed), gpad)
        out = fused(cl[1])                       # again, after all the timed calls
        row["rel_err_again"] = rel_err(out[sl], ref_mod(inputs[1][sl].double()))
        row["ok"] = row["ok"] and row["rel_err_again"] <= TOL[dtype]
        flops = 2 * (shape.batch * shape.out_channels * shape.hw * shape.hw if conv
                     else shape.tokens * shape.out_features) * row["kept_k"]
        row["fused_TFLOPs"] = flops / row["fused_ms"] / 1e9
        row["ideal_TFLOPs"] = flops / row["ideal_ms"] / 1e9
    return row


# ------------------------------------------------------------------ compiled-kernel report

def asm_report() -> list[dict]:
    """Registers, spills, shared memory and key PTX instruction counts per compiled kernel."""
    rows = []
    for name, fn in [("linear", gl.groupwise_linear_kernel),
                     ("conv2d", gc.groupwise_conv2d_kernel)]:
        caches = getattr(fn, "device_caches", {})
        for dev_cache in caches.values():
            kernels = dev_cache[0] if isinstance(dev_cache, tuple) else dev_cache
            for key, k in list(kernels.items())[:64]:
                try:
                    ptx = k.asm.get("ptx", "")
                    rows.append({"kernel": name, "key": str(key)[:300],
                                 "num_warps": k.metadata.num_warps,
                                 "num_stages": k.metadata.num_stages,
                                 "shared": k.metadata.shared, "n_regs": k.n_regs,
                                 "n_spills": k.n_spills,
                                 "wgmma": ptx.count("wgmma.mma_async"),
                                 "mma_sync": ptx.count("mma.sync"),
                                 "cp_async": ptx.count("cp.async.ca") + ptx.count("cp.async.cg"),
                                 "cp_async_bulk": ptx.count("cp.async.bulk"),
                                 "ld_global_b16": ptx.count("ld.global.b16"),
                                 "ld_global_v4": ptx.count("ld.global.v4"),
                                 "ld_global": ptx.count("ld.global")})
                except Exception as e:  # noqa: BLE001
                    rows.append({"kernel": name, "error": repr(e)[:200]})
    return rows


# ------------------------------------------------------------------ table

def table(rows: list[dict], ceil: dict) -> str:
    lines = [f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, "
             f"triton {triton.__version__}; ceilings: " +
             ", ".join(f"{k} {v:.0f}" for k, v in ceil.items()), "",
             "| preset | dtype | kept | dense ms | gather+GEMM ms | ideal ms | fused ms | "
             "fused/ideal | fused/dense | gather+GEMM/dense | fused TFLOP/s | err | extra |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['preset']} | {r['dtype']} | {r['kept']} | error: "
                         f"{r['error'][:120]} |")
            continue
        extra = []
        for k in ("fused_nchw_ms", "ideal_flat_ms", "mode_inloop_ms", "mode_prefetch_ms",
                  "mode_pairs_ms", "triton_plain_ms"):
            if k in r:
                extra.append(f"{k[:-3].replace('mode_', '')} {r[k]:.4f}")
        lines.append(
            f"| {r['preset']} | {r['dtype']} | {r['kept']} | {r['dense_ms']:.4f} | "
            f"{r['gather_gemm_ms']:.4f} | {r['ideal_ms']:.4f} | {r['fused_ms']:.4f} | "
            f"{r['fused_ms'] / r['ideal_ms']:.2f} | {r['fused_ms'] / r['dense_ms']:.2f} | "
            f"{r['gather_gemm_ms'] / r['dense_ms']:.2f} | {r['fused_TFLOPs']:.0f} | "
            f"{r['rel_err']:.1e}{'' if r['ok'] else ' FAIL'} | {'; '.join(extra)} |")
    return "\n".join(lines)


def profile(spec: str) -> None:
    """``PRESET:DTYPE:KEPT``: build the fused module, autotune it, then run it once inside
    the NVTX range "profile" (for ``ncu --nvtx --nvtx-include profile/``)."""
    preset, dtype, kept = spec.split(":")
    shape, dt = get_shape(preset), DTYPES[dtype]
    net = pruned(preset, float(kept))
    layer = copy.deepcopy(unparametrized(net[0])).to("cuda", dt)
    with torch.inference_mode():
        fused = GroupwiseFused.from_masked(layer, get_mask(net[0]).cpu(), precision="tf32")
        x = torch.randn(shape.input_shape(), device="cuda").to(dt)
        if shape.kind == "conv":
            x = x.contiguous(memory_format=torch.channels_last)
        fused(x)
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_push("profile")
        fused(x)
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_pop()
    kmod = gc if shape.kind == "conv" else gl
    print(spec, kmod.tuned_kernel(target(), dt != torch.float32).best_config)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "runs/kernels"))
    ap.add_argument("--presets", nargs="+", default=PRESETS)
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES))
    ap.add_argument("--kept", nargs="+", type=float, default=KEPT)
    ap.add_argument("--budget-s", type=float, default=330, help="stop starting cases after")
    ap.add_argument("--workers", type=int, default=12, help="precompile processes (0: none)")
    ap.add_argument("--no-diag", action="store_true")
    ap.add_argument("--profile", metavar="PRESET:DTYPE:KEPT", help="one fused call to profile")
    args = ap.parse_args()
    if args.profile:
        return profile(args.profile)
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    cases = [(p, d, k) for d in args.dtypes for p in args.presets for k in args.kept]
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "target": target(), "tf32": True}
    if args.workers:
        meta["precompile"] = precompile(args.presets, args.dtypes, not args.no_diag,
                                        args.workers)
        print("precompile", meta["precompile"], flush=True)
    meta["ceilings"] = ceilings()
    print("ceilings", meta["ceilings"], flush=True)
    rows, inputs_cache = [], {}
    for preset, dtype, kept in cases:
        if time.time() - t0 > args.budget_s:
            rows.append({"preset": preset, "dtype": dtype, "kept": kept,
                         "error": "skipped: time budget"})
            continue
        key = (preset, dtype)
        if key not in inputs_cache:
            inputs_cache.clear()
            torch.cuda.empty_cache()
            inputs_cache[key] = make_inputs(get_shape(preset).input_shape(), dtype=DTYPES[dtype],
                                            device="cuda", seed=1)
        try:
            row = bench_case(preset, dtype, kept, inputs_cache[key],
                             diag=dtype == "fp16" and not args.no_diag)
        except Exception as e:  # noqa: BLE001 — one failing case must not end the run
            row = {"preset": preset, "dtype": dtype, "kept": kept,
                   "error": f"{type(e).__name__}: {e}"[:600]}
        row["t"] = round(time.time() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = table(rows, meta["ceilings"])
    (out / "table.md").write_text(md + "\n")
    (out / "asm.json").write_text(json.dumps(asm_report(), indent=1))
    print(f"\ntotal {time.time() - t0:.0f} s\n")
    print(md)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
