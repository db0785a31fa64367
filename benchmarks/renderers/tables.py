"""Renderers of benchmarks whose table is built here from the JSON.

The GPU kernel and whole-model programs (``bench_fused.py``, ``gather_probe.py``,
``conv_channel_groups.py``, ``bench_compact.py``, ``bench_semi24.py``) and the one-shot
timing program (``benchmarks/oneshot/timing.py``) write JSON only;
these functions turn it into the table of the folder's README.
"""

from __future__ import annotations

from pathlib import Path

from .common import Page, Result, Run, committed, load, ms, simple_run, table, versions


def kernels(folder: Path, r: Result) -> Page:
    """``bench_fused.py``'s table, with the device and ceilings its JSON records."""
    path = folder / "results.json"
    d = load(path)
    meta = d["meta"]
    extra_keys = ("fused_nchw_ms", "ideal_flat_ms", "mode_inloop_ms", "mode_prefetch_ms",
                  "mode_pairs_ms", "triton_plain_ms")
    rows = []
    for x in d["rows"]:
        if "error" in x:
            rows.append([x["preset"], x["dtype"], str(x["kept"]), "error: " + x["error"][:120],
                         *[""] * 9])
            continue
        extra = "; ".join(f"{k[:-3].replace('mode_', '')} {x[k]:.4f}" for k in extra_keys
                          if k in x)
        rows.append([x["preset"], x["dtype"], str(x["kept"]), ms(x["dense_ms"]),
                     ms(x["gather_gemm_ms"]), ms(x["ideal_ms"]), ms(x["fused_ms"]),
                     f"{x['fused_ms'] / x['ideal_ms']:.2f}", f"{x['fused_ms'] / x['dense_ms']:.2f}",
                     f"{x['gather_gemm_ms'] / x['dense_ms']:.2f}", f"{x['fused_TFLOPs']:.0f}",
                     f"{x['rel_err']:.1e}" + ("" if x["ok"] else " FAIL"), extra])
    ceil = ", ".join(f"{k} {v:.0f}" for k, v in meta.get("ceilings", {}).items())
    body = [f"Ceilings measured in the run: {ceil}.", "",
            *table(["preset", "dtype", "kept", "dense ms", "gather+GEMM ms", "ideal ms",
                    "fused ms", "fused/ideal", "fused/dense", "gather+GEMM/dense",
                    "fused TFLOP/s", "err", "extra (ms)"], rows)]
    if (folder / "asm.json").exists():
        body += ["", "`asm.json`: registers, spills and instruction counts of every compiled "
                 "kernel variant."]
    run = Run(meta["device"], versions(torch=meta.get("torch"), triton=meta.get("triton"),
                                       target=meta.get("target")),
              committed(path), r.command)
    return Page([run], body)


def gather(folder: Path, r: Result) -> Page:
    """``gather_probe.py``: gather implementations against copying x."""
    path = folder / "gather.json"
    d = load(path)
    rows = []
    for x in d["rows"]:
        tiles = {k: v for k, v in x.items() if k.startswith("triton_") and k.endswith("_ms")}
        best = min(tiles, key=tiles.__getitem__) if tiles else None
        rows.append([x["preset"], str(x["kept"]), ms(x["dense_ms"]), ms(x["copy_ms"]),
                     ms(x["index_select_ms"]), ms(x["indexing_ms"]),
                     f"{ms(tiles[best])} ({best[7:-3]})" if best else "", ms(x["ideal_ms"]),
                     ms(x.get("gather_gemm_index_select_ms")),
                     ms(x.get("gather_gemm_triton_ms"))])
    body = table(["preset", "kept", "dense ms", "copy x ms", "index_select ms",
                  "x[:, idx] ms", "Triton gather ms (best tile)", "ideal ms",
                  "index_select+GEMM ms", "Triton gather+GEMM ms"], rows)
    return Page([simple_run(d, path, r.command)], body)


def channel_groups(folder: Path, r: Result) -> Page:
    """``conv_channel_groups.py``: a conv pruned by whole input channels against cuDNN."""
    path = folder / "channel_groups.json"
    d = load(path)
    rows = [[x["preset"], x["dtype"], str(x["kept"]), str(x["channels"]), x["layout"],
             ms(x["dense_ms"]), ms(x["groupwise_ms"]), ms(x["ideal_ms"]),
             f"{x['groupwise/dense']:.2f}", f"{x['ideal/dense']:.2f}", f"{x['rel_err']:.1e}"]
            for x in d["rows"]]
    body = table(["preset", "dtype", "kept", "channels", "layout", "dense ms", "groupwise ms",
                  "ideal ms", "groupwise/dense", "ideal/dense", "err"], rows)
    return Page([simple_run(d, path, r.command)], body)


def compact(folder: Path, r: Result) -> Page:
    """``bench_compact.py``: whole models, group-pruned, with and without compaction."""
    path = folder / "compact.json"
    d = load(path)
    rows = [[x["model"], x.get("pattern", "group"), x["variant"],
             "yes" if x.get("channels_last") else "no", "yes" if x["cuda_graph"] else "no",
             ms(x["dense_ms"], 3), ms(x["ms"], 3), f"{x['ratio']:.2f}×",
             f"{x['max_rel_err']:.1e}" if x.get("max_rel_err") is not None else ""]
            for x in d["rows"]]
    body = [f"Batch {d['rows'][0]['batch']}, fp16; each ratio is against dense in the same "
            "memory format and graph mode, in the same run; err is the largest relative error "
            "against the pruned fp32 model.", "",
            *table(["model", "pattern", "variant", "channels-last", "CUDA graph", "dense ms",
                    "ms", "ratio", "err"], rows)]
    comp = d.get("compaction") or {}
    if comp:
        body += ["", *table(["model", "layers compacted", "parameters before", "after",
                             "max rel error"],
                            [[k.strip(), str(v.get("compacted")), f"{v['params_before']:,}",
                              f"{v['params_after']:,}", f"{v['max_rel_error']:.1e}"]
                             for k, v in comp.items() if not v.get("error")])]
    return Page([simple_run(d, path, r.command)], body)


def semi24(folder: Path, r: Result) -> Page:
    """``bench_semi24.py``: 2:4 through cuSPARSELt, eager and in a CUDA graph."""
    path = folder / "semi24.json"
    d = load(path)
    rows = []
    for x in d["rows"]:
        best = x[x["best_cslt"]]["ms"]
        gd, gc = x["graph:dense"]["ms"], x["graph:cslt"]["ms"]
        rows.append([f"{x['shape']} {x['N']}×{x['K']}→{x['R']}", ms(x["dense"]["ms"]),
                     ms(x["subclass"]["ms"]), ms(x["cslt"]["ms"]), ms(x["cslt+search"]["ms"]),
                     ms(gd), ms(gc), f"{best / x['dense']['ms']:.2f}×", f"{gc / gd:.2f}×"])
    body = ["fp16, medians in ms.", "",
            *table(["shape (N×K→R)", "dense", "torch subclass", "direct cslt",
                    "cslt + alg search", "dense, CUDA graph", "cslt, CUDA graph",
                    "best eager / dense", "graph cslt / graph dense"], rows)]
    return Page([simple_run(d, path, r.command)], body)


def oneshot_timing(folder: Path, r: Result) -> Page:
    """``benchmarks/oneshot/timing.py``: one JSON per run (``*.json``), one row per prune."""
    runs, rows = [], []
    for path in sorted(folder.glob("*.json")):
        d = load(path)
        a, env = d["args"], d["env"]
        flags = " ".join(f"--{k.replace('_', '-')} {a[k]}" for k in
                         ("models", "criteria", "patterns", "device", "dtype") if a.get(k))
        runs.append(Run(env.get("gpu") or env.get("cpu", "?"),
                        versions(torch=env.get("torch"), threads=env.get("threads")),
                        committed(path),
                        f"PYTHONPATH=src:. python benchmarks/oneshot/timing.py {flags}"))
        for x in d["rows"]:
            peak = x.get("peak_extra_gib")
            rows.append([x["model"], f"{x['params_m']:.0f}", x["criterion"], x["pattern"],
                         f"{x['tokens']:,} ({a['seqs']} × {a['seq_len']})", env["dtype"],
                         f"{x['wall_s']:.1f}", str(x["layers"]), f"{x['kept']:.3f}",
                         "" if peak is None else f"{peak:.2f}"])
    body = ["Wall time of `spruce.prune(..., calibration=...)`: sequential calibration (each "
            "block's inputs through the blocks already pruned) and the solves; random weights "
            "and random token ids (the time does not depend on them). peak +GiB = device memory "
            "above the model's own.", "",
            *table(["model", "params M", "criterion", "pattern", "calibration tokens", "dtype",
                    "wall s", "layers", "kept", "peak +GiB"], rows)]
    return Page(runs, body)
