"""The README of every result folder is what ``benchmarks/render_results.py`` makes of its JSON."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_results_readmes_are_generated_from_their_json():
    shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT,
                             capture_output=True, text=True)
    if shallow.returncode != 0 or shallow.stdout.strip() != "false":
        pytest.skip("needs a git checkout with history (dates come from commits)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
               MPLBACKEND="Agg")
    run = subprocess.run([sys.executable, "benchmarks/render_results.py", "--check"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, (
        "stale result READMEs; run `PYTHONPATH=src:. python benchmarks/render_results.py`:\n"
        + run.stdout + run.stderr[-2000:])
