"""Checkpoints: atomic folders, exact resumption, and a run killed with SIGKILL mid-epoch."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from spruce import data
from spruce.train import TrainConfig, train
from spruce.train import checkpoint as ckpt

SRC = str(Path(__file__).resolve().parents[1] / "src")
# 3 epochs of 22 steps, gradual group pruning (masks change during the run), checkpoints
# every 5 steps: deterministic kernels on one thread, so reruns are bitwise equal
RUN = dict(model="tiny_cnn", data="digits", epochs=3, lr=0.05, pattern="group", density=0.5,
           prune_mode="gradual", prune_every=4, checkpoint_every=5, keep_checkpoints=100,
           deterministic=True, threads=1, progress=False, seed=3)


def _weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_from_mid_epoch_checkpoint_equals_uninterrupted(tmp_path):
    digits = data.load("digits")
    full = tmp_path / "full"
    train(TrainConfig(**RUN, checkpoint_dir=str(full), output=str(full / "m.safetensors")),
          data=digits)
    mid = full / ckpt.step_dir_name(35)  # epoch 1, batch 13; after 8 pruning events
    assert ckpt.read_state(mid)["epoch"] == 1
    part = tmp_path / "part"
    part.mkdir()
    shutil.copytree(mid, part / mid.name)
    result = train(TrainConfig(**RUN, checkpoint_dir=str(part), resume=True,
                               output=str(part / "m.safetensors")), data=digits)
    assert result.resumed_from == str(part / mid.name) and result.steps == 66
    _assert_same(_weights(full / "m.safetensors"), _weights(part / "m.safetensors"))
    # the optimizer state came back too: the final checkpoints agree tensor for tensor
    _assert_same(_weights(full / ckpt.step_dir_name(66) / "optim.safetensors"),
                 _weights(part / ckpt.step_dir_name(66) / "optim.safetensors"))
    rows = (part / "train_log.csv").read_text().splitlines()
    steps = [int(r.split(",")[0]) for r in rows[1:]]
    assert steps == sorted(set(steps)) and steps[0] > 35  # nothing logged twice


SCRIPT = """
import json, sys, time
from spruce.train import TrainConfig, train, runner
cfg, delay = TrainConfig(**json.loads(sys.argv[1])), float(sys.argv[2])
if delay:  # slow each step down so the test can kill the run mid-epoch
    step = runner.Trainer.train_step
    runner.Trainer.train_step = lambda self, batch: (time.sleep(delay), step(self, batch))[1]
train(cfg)
"""


def _run(cfg: dict, delay: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(cfg), str(delay)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait(proc: subprocess.Popen, timeout: float = 240) -> None:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out.decode()[-3000:]


def test_sigkill_mid_epoch_then_resume_gives_the_same_final_weights(tmp_path):
    ref = {**RUN, "checkpoint_dir": str(tmp_path / "ref"),
           "output": str(tmp_path / "ref" / "m.safetensors")}
    killed = {**RUN, "checkpoint_dir": str(tmp_path / "run"),
              "output": str(tmp_path / "run" / "m.safetensors")}
    reference = _run(ref)
    victim = _run(killed, delay=0.05)
    pointer = tmp_path / "run" / ckpt.POINTER
    deadline = time.time() + 180
    while not pointer.is_file() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.02)
    time.sleep(0.2)  # a few more steps, then kill without warning
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    last = ckpt.latest(tmp_path / "run")
    state = ckpt.read_state(last)
    assert 0 < state["step"] < 66 and state["step"] % 22 != 0  # killed mid-epoch
    assert not (tmp_path / "run" / "m.safetensors").exists()
    _wait(_run({**killed, "resume": True}))
    _wait(reference)
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    assert result["resumed_from"] == str(last) and result["steps"] == 66
    _assert_same(_weights(tmp_path / "ref" / "m.safetensors"),
                 _weights(tmp_path / "run" / "m.safetensors"))


def test_latest_ignores_partial_folders_and_a_stale_pointer(tmp_path):
    assert ckpt.latest(tmp_path) is None
    (tmp_path / ".tmp-step_abc").mkdir()  # a killed write
    (tmp_path / "step_000000010").mkdir()  # incomplete: no files
    done = tmp_path / "step_000000005"
    done.mkdir()
    for f in ckpt.FILES:
        (done / f).write_text("{}")
    (tmp_path / ckpt.POINTER).write_text("step_000000099\n")  # names a folder that is gone
    assert ckpt.latest(tmp_path) == done
    ckpt.clean_stale(tmp_path)
    assert not (tmp_path / ".tmp-step_abc").exists()


def test_optimizer_state_round_trip_through_json_and_safetensors():
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.randn(3)
    opt.step()
    tensors: dict = {}
    blob = json.loads(json.dumps(ckpt.split_tensors(opt.state_dict(), tensors)))
    back = ckpt.join_tensors(blob, tensors)
    assert list(back["state"]) == [0]  # integer keys survive JSON
    opt2 = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone())], lr=0.1)
    opt2.load_state_dict(back)
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(v, opt2.state_dict()["state"][0][k])
