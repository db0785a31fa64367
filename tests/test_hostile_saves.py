"""Saving: a pruned bare layer saves and loads, and a save that is killed or fails half-way
leaves the old file, and after the next save nothing else, behind."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import spruce
from spruce.io import atomic_write
from tests.file_cases import child_env

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ bare layers, killed saves

@pytest.mark.parametrize("make,pattern,x", [
    (lambda: nn.Linear(16, 8), "group", torch.randn(3, 16)),
    (lambda: nn.Conv2d(4, 8, 3), "channel", torch.randn(1, 4, 5, 5))])
def test_a_pruned_bare_layer_saves_and_loads(tmp_path, make, pattern, x):
    layer = make()
    spruce.prune(layer, pattern, 0.5)
    path = spruce.save(layer, tmp_path / "layer.safetensors")
    fresh = spruce.load(path, make())
    assert torch.equal(fresh(x), layer(x))
    assert torch.equal(spruce.get_mask(fresh), spruce.get_mask(layer))


KILLED_SAVE = """
import os, signal, sys
from spruce.io import atomic_write
def write(tmp):
    open(tmp, "wb").write(b"half a file")
    os.kill(os.getpid(), signal.SIGKILL)
atomic_write(sys.argv[1], write)
"""


def test_a_killed_save_leaves_nothing_after_the_next_save(tmp_path):
    target = tmp_path / "m.safetensors"
    p = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(target)], cwd=ROOT,
                         env=child_env())
    assert p.wait() == -signal.SIGKILL
    left = list(tmp_path.iterdir())  # the killed save's folder, with its half file
    assert len(left) == 1 and left[0].name.startswith(f".m.safetensors.{p.pid}.")
    assert (left[0] / "m.safetensors").read_bytes() == b"half a file"
    live = tmp_path / f".m.safetensors.{os.getpid()}.busy.tmp"  # a save in progress here
    live.mkdir()
    spruce.save(nn.Linear(2, 2), target)
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted([live.name, target.name])


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")

    def fail(tmp):
        open(tmp, "w").write("new, half")
        raise OSError("disk full")
    with pytest.raises(OSError):
        atomic_write(target, fail)
    assert target.read_text() == "old" and [f.name for f in tmp_path.iterdir()] == ["t.txt"]
