"""Which steps work on models spruce did not write: a model × step matrix on the CPU.

For every model of the any-model test set (transformers models built from small configs, a
hand-written module with Conv1d, MultiheadAttention, a reused Linear and a tied embedding
head) and one pattern, each step is run and compared with the pruned model:
prune; convert with dense, groupwise, channel, csr, bsr and auto; save → load of the pruned
and of a converted model; bake; coupled pruning + compact; ONNX export (checked with
onnxruntime). A cell is ``OK`` (outputs equal the pruned model's within 1e-4 relative
error), ``refused: …`` (a SpruceError/ValueError naming what and why), or ``FAILED: …``.

    PYTHONPATH=src:. python benchmarks/any_model/matrix.py --output DIR
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import tempfile
from pathlib import Path

import torch

import spruce
from spruce.compact.core import relative_error, run
from tests.test_any_model import CASES

STEPS = ("prune", "dense", "groupwise", "channel", "csr", "bsr", "auto", "save-load",
         "converted save-load", "bake", "coupled+compact", "onnx")


def _same(ref: list[torch.Tensor], out: list[torch.Tensor]) -> str:
    errs = [relative_error(r, o) for r, o in zip(ref, out, strict=True) if r.is_floating_point()]
    worst = max(errs, default=0.0)
    return "OK" if worst <= 1e-4 else f"FAILED: relative error {worst:.1e}"


def _cell(fn) -> str:
    try:
        return fn()
    except ValueError as e:  # SpruceError included: a named refusal
        why = re.sub(r"^\S*/tmp\w*/\S+: ", "", str(e).splitlines()[0])  # a scratch file
        return f"refused: {why[:110]}"
    except Exception as e:  # noqa: BLE001 - the matrix records every failure
        return f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:100]}"


def row(case, pattern: str, density: float) -> dict[str, str]:
    torch.manual_seed(0)
    model, x = case.build().eval(), case.inputs()
    cells = {"prune": _cell(lambda: (spruce.prune(model, pattern, density), "OK")[1])}
    if cells["prune"] != "OK":
        return cells
    ref = run(model, x)
    for backend in ("dense", "groupwise", "channel", "csr", "bsr", "auto"):
        cells[backend] = _cell(lambda b=backend: _same(
            ref, run(spruce.convert(model, b, example_input=x), x)))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.safetensors"
        cells["save-load"] = _cell(lambda: (spruce.save(model, path), _same(
            ref, run(spruce.load(path, case.build().eval()), x)))[1])
        cpath = Path(d) / "c.safetensors"
        cells["converted save-load"] = _cell(lambda: (spruce.save(
            spruce.convert(model, "groupwise", example_input=x), cpath), _same(
            ref, run(spruce.load(cpath, case.build().eval()), x)))[1])
        onnx = Path(d) / "m.onnx"
        cells["onnx"] = _cell(lambda: (spruce.export_onnx(
            spruce.convert(model, "dense", example_input=x), x, onnx), "OK")[1])
    cells["bake"] = _cell(lambda: _same(ref, run(spruce.bake(copy.deepcopy(model)), x)))
    cells["coupled+compact"] = _cell(lambda: _coupled(case, x))
    return cells


def _coupled(case, x) -> str:
    model = case.build().eval()
    spruce.prune(model, "channel", 0.5, scope="coupled", example_input=x)
    small = spruce.compact(model, x)
    rep = small.spruce_compaction
    verdict = _same(run(model, x), run(small, x))
    return f"{verdict} ({len(rep.compacted)}/{len(rep.rows)} groups, params " \
           f"{rep.params_after / rep.params_before:.2f}×)" if verdict == "OK" else verdict


def render(results: dict) -> str:
    lines = [f"pattern: {results['pattern']}; torch {results['torch']}, transformers "
             f"{results['transformers']}; `{results['command']}`", "",
             "| model | " + " | ".join(STEPS) + " |", "|---|" + "---|" * len(STEPS)]
    for name, cells in results["rows"].items():
        lines.append(f"| {name} | " + " | ".join(cells.get(s, "—") for s in STEPS) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import sys

    import transformers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pattern", default="group")
    ap.add_argument("--density", type=float, default=0.5)
    ap.add_argument("--output", type=Path, required=True)
    args = ap.parse_args()
    results = {"pattern": args.pattern, "torch": torch.__version__,
               "transformers": transformers.__version__, "command": " ".join(sys.argv),
               "rows": {}}
    for case in CASES:
        results["rows"][case.name] = row(case, args.pattern, args.density)
        print(case.name, results["rows"][case.name], flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(results, indent=1))
    (args.output / "README.md").write_text(render(results))
    print(render(results))


if __name__ == "__main__":
    main()
