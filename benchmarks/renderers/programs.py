"""Renderers of benchmarks whose program renders its own table.

Each one reads the folder's JSON, collects the runs behind it and hands the rest to the
program's own code: ``spruce characterize``, ``bench_structure.py --render``,
``compiled/grid.py --render``, ``oneshot/render.py``, ``digits_accuracy.py --render``,
``matrix.py``, ``auto/report.py``, ``breakdown.py --render``, ``learned_masks/report.py``
and ``spruce.train.experiment``.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import common
from .common import Page, Result, Run, committed, load, module, simple_run, versions


@contextlib.contextmanager
def _patched(obj: Any, name: str, value: Any):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def characterize(folder: Path, r: Result) -> Page:
    """``spruce characterize`` / ``spruce bench model``: its own report, plots included."""
    from spruce.bench import report as char_report

    path = folder / "results.json"
    d = load(path)
    env = d["environment"]
    tmp = Path(tempfile.mkdtemp())
    with contextlib.redirect_stdout(io.StringIO()), contextlib.ExitStack() as stack:
        if not common.DRAW:   # --check compares the markdown only
            for name in ("plot_model", "plot_layer", "plot_steps"):
                stack.enter_context(_patched(char_report.plots, name, lambda rs, t, p: p))
        report, plots = char_report.write_report(tmp, d["records"], env, r.title)
    lines = report.read_text().splitlines()[1:]   # its title is ours
    run = Run(env.get("device_name") or env.get("device", "?"),
              versions(torch=env.get("torch"), triton=env.get("triton"), cuda=env.get("cuda"),
                       python=env.get("python"), spruce=env.get("spruce")),
              str(env.get("date", committed(path)))[:10], r.command)
    return Page([run], lines, {f"plots/{p.name}": p for p in plots})


def structure(folder: Path, r: Result) -> Page:
    """``bench_structure.py --render``."""
    render = module("benchmarks/structure/structure_render.py").render
    d = load(folder / "results.json")
    runs = [Run(e.get("device_name", e.get("device", "?")),
                versions(torch=e.get("torch"), triton=e.get("triton"),
                         transformers=e.get("transformers"), dtype=e.get("dtype")),
                str(e.get("date", "?"))[:10], run.get("command", "?"))
            for run in d["runs"] for e in [run.get("env", {})]]
    return Page(runs, render(d).splitlines())


def compiled(folder: Path, r: Result) -> Page:
    """``compiled/grid.py --render``: pruned models against the best dense path."""
    render = module("benchmarks/compiled/grid_render.py").render
    d = load(folder / "results.json")
    e = d["environment"]
    commands = e["command"] if isinstance(e["command"], list) else [e["command"]]
    runs = [Run(e.get("device_name", e.get("device", "?")),
                versions(torch=e.get("torch"), triton=e.get("triton"),
                         transformers=e.get("transformers"), torchvision=e.get("torchvision"),
                         dtype=e.get("dtype")), str(e.get("date", "?"))[:10], c)
            for c in commands]
    body = render(d).splitlines()
    return Page(runs, body[1:])  # the page has its own title


def _oneshot_args(args: dict) -> str:
    """The options of a MiniLM one-shot run that are not the program's defaults."""
    out = ""
    if args.get("patterns") and len(args["patterns"]) < 5:
        out += f" --patterns \"{','.join(args['patterns'])}\""
    for key, default in (("calib", 512), ("threads", 1)):
        if args.get(key, default) != default:
            out += f" --{key} {args[key]}"
    return out


def minilm_oneshot(folder: Path, r: Result) -> Page:
    """``oneshot/minilm.py``: one-shot criteria on all-MiniLM-L6-v2 (table and plot)."""
    mod = module("benchmarks/oneshot/render.py")
    rows, runs = mod.load_rows([folder / "results.json"])
    date = committed(folder / "results.json")
    pages = [Run(x["env"].get("gpu") or x["env"]["device"],
                 versions(torch=x["env"]["torch"], threads=x["env"]["threads"]), date,
                 "PYTHONPATH=src:. python benchmarks/oneshot/minilm.py --device "
                 f"{x['env']['device']} --criteria {','.join(x['criteria'])}"
                 + _oneshot_args(x.get("args", {})))
             for x in runs]
    tmp = Path(tempfile.mkdtemp()) / "plot.png"
    mod.plot(rows, tmp)
    body = ["Every encoder Linear pruned; cosine = mean cosine similarity to the dense "
            "sentence embeddings; NN@1 = nearest-neighbour agreement, NN@10 = top-10 overlap, "
            "on the held-out docstring sentences and on README/licence prose "
            "(`benchmarks/oneshot/prose.jsonl`); Δ cosine = prose − docstrings. Calibration: "
            "training docstrings only. wall s = pruning time.", "",
            *mod.table(rows).splitlines(), "", "![fidelity vs kept fraction](plot.png)"]
    return Page(pages, body, {"plot.png": tmp})


def digits_structure(folder: Path, r: Result) -> Page:
    """``digits_accuracy.py --render``."""
    render = module("benchmarks/structure/digits_accuracy.py").render
    d = load(folder / "results.json")
    env = d["environment"]
    run = Run(f"CPU ({env.get('machine')}, {env.get('cpus')} cores)",
              versions(torch=env.get("torch"), spruce=env.get("spruce"),
                       numpy=env.get("numpy"), python=env.get("python")),
              d["date"][:10], d["command"])
    return Page([run], render(d).splitlines()[1:])


def any_model(folder: Path, r: Result) -> Page:
    """``matrix.py`` (it writes its own table)."""
    render = module("benchmarks/any_model/matrix.py").render
    path = folder / "results.json"
    d = load(path)
    run = Run("CPU", versions(torch=d.get("torch"), transformers=d.get("transformers")),
              committed(path), d["command"])
    return Page([run], render(d).splitlines())


def auto(folder: Path, r: Result) -> Page:
    """``auto/report.py DIR``, run on a copy of the folder."""
    report = module("benchmarks/auto/report.py")
    tmp = Path(tempfile.mkdtemp())
    runs = []
    for src in sorted(folder.glob("auto-*.json")):
        shutil.copy(src, tmp / src.name)
        d = load(src)
        dtypes = sorted({row["dtype"] for row in d["rows"]})
        models = list(dict.fromkeys(row["model"] for row in d["rows"]))
        runs.append(simple_run(d, src, r.command.replace("DTYPE", "/".join(dtypes))
                               .replace("MODELS", " ".join(models))))
    argv = sys.argv
    try:
        sys.argv = ["report.py", str(tmp)]
        with contextlib.redirect_stdout(io.StringIO()):
            report.main()
    finally:
        sys.argv = argv
    return Page(runs, (tmp / "README.md").read_text().splitlines()[1:])


def breakdown(folder: Path, r: Result) -> Page:
    """``breakdown.py --render`` of each JSON (NCHW, then channels-last)."""
    bd = module("benchmarks/compact/breakdown.py")
    runs, body = [], []
    for name, label, cases in (("breakdown.json", "NCHW", "0,2"),
                               ("breakdown-cl.json", "channels-last", "2 --channels-last")):
        path = folder / name
        if not path.exists():
            continue
        d = load(path)
        cmd = f"OUT=DIR python benchmarks/compact/breakdown.py --cases {cases}"
        runs.append(simple_run(d, path, cmd))
        body += [f"## {label} (`{name}`)", "", bd.table(bd.with_floors(d["rows"])), ""]
    return Page(runs, body)


def learned_masks(folder: Path, r: Result) -> Page:
    """``learned_masks/report.py --runs DIR``, run on a copy of the folder."""
    report = module("benchmarks/learned_masks/report.py")
    tmp = Path(tempfile.mkdtemp())
    for src in folder.glob("*.json"):
        shutil.copy(src, tmp / src.name)
    lines = report.runs_report(tmp).splitlines()[1:]
    runs = []
    for src in sorted(folder.glob("*.json")):
        d = load(src)
        env = d["env"]
        cmd = ("PYTHONPATH=src:. python benchmarks/learned_masks/cnn.py --device cuda"
               if src.stem == "cnn" else report.command(d["args"]))
        runs.append(Run(env.get("gpu") or env.get("device", "?"),
                        versions(torch=env.get("torch"), python=env.get("python")),
                        committed(src), cmd))
    return Page(runs, lines, {"minilm-curves.png": tmp / "minilm-curves.png"})


def learned_masks_loop(folder: Path, r: Result) -> Page:
    """``minilm.py`` through the training loop: its rows, with the curve it drew."""
    report = module("benchmarks/learned_masks/report.py")
    path = folder / "minilm-loop.json"
    d = load(path)
    env = d["env"]
    run = Run(f"CPU ({env.get('cpu')}, {env.get('threads')} threads)",
              versions(torch=env.get("torch"), python=env.get("python")), committed(path),
              r.command)
    body = [*report.table(d["rows"]), "",
            "![curve](minilm-loop-curve.png)"]
    return Page([run], body)


def train_digits(folder: Path, r: Result) -> Page:
    """``python -m spruce.train.experiment``: its table."""
    from spruce.train.experiment import table as digits_table

    d = load(folder / "results.json")
    env = d["environment"]
    run = Run(f"CPU ({env.get('machine')}, {env.get('threads')} thread per run)",
              versions(torch=env.get("torch"), spruce=env.get("spruce"),
                       python=env.get("python")), env["date"], d["command"])
    seeds = sorted({x["seed"] for x in d["runs"]})
    return Page([run], [f"Seeds {', '.join(map(str, seeds))}; mean ± sd.", "",
                        *digits_table(d["runs"])])
