"""Long runs lose nothing: Ctrl-C, a locked checkpoint folder, damaged checkpoints, NaN
weights, a final save that fails, and --init files that cannot be trained from."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import spruce
from spruce import data
from spruce.errors import SpruceError
from spruce.train import NonFiniteLoss, OutputNotWritten, TinyCNN, TrainConfig, runner, train
from spruce.train import checkpoint as ckpt
from spruce.train.guard import LOCK_NAME, FolderLock, save_or_keep

SRC = str(Path(__file__).resolve().parents[1] / "src")
# 4 steps of 32 digits, a checkpoint every 2: step_000000002 and step_000000004
RUN = dict(model="tiny_cnn", data="digits", steps=4, batch_size=32, checkpoint_every=2,
           keep_checkpoints=10, threads=1, progress=False, seed=0, eval_batch_size=512)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, digits) -> Path:
    """The checkpoint folder of one finished 4-step run (copied by each test)."""
    folder = tmp_path_factory.mktemp("run") / "ckpt"
    train(TrainConfig(**RUN, checkpoint_dir=str(folder)), data=digits)
    assert ckpt.latest(folder).name == ckpt.step_dir_name(4)
    return folder


def _copy(finished: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    shutil.copytree(finished, folder)
    (folder / LOCK_NAME).unlink(missing_ok=True)
    return folder


def _edit_state(folder: Path, edit) -> None:
    file = ckpt.latest(folder) / "state.json"
    file.write_text(json.dumps(edit(json.loads(file.read_text()))))


def _truncate(name: str):
    def corrupt(folder: Path) -> None:
        file = ckpt.latest(folder) / name
        file.write_bytes(file.read_bytes()[:100])
    return corrupt


def _nan_weights(folder: Path) -> None:
    file = ckpt.latest(folder) / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(file))
    key = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, str(file), meta)


def _drop(key):
    return lambda folder: _edit_state(folder, lambda s: {k: v for k, v in s.items()
                                                         if k != key})


def _set(key, value):
    return lambda folder: _edit_state(folder, lambda s: {**s, key: value})


CORRUPTIONS = {  # name: (damage, what the error must say)
    "no optimizer": (_drop("optimizer"), r"field 'optimizer' is missing"),
    "no rng": (_drop("rng"), r"field 'rng' is missing"),
    "truncated optim": (_truncate("optim.safetensors"), r"optim\.safetensors: cannot restore"),
    "truncated model": (_truncate("model.safetensors"), r"model\.safetensors"),
    "state is a list": (lambda f: _edit_state(f, lambda s: [s]), r"holds a JSON list"),
    "step -5": (_set("step", -5), r"field 'step' must be an integer >= 0; got -5"),
    "step 1e9 float": (_set("step", 1e9),
                       r"field 'step' must be an integer >= 0; got 1000000000\.0"),
    "step 10**9": (_set("step", 10 ** 9), r"field 'step' is 1000000000, past the run's 4"),
    "rng garbage": (_set("rng", [{"torch": "AAAA", "numpy": [0] * 5, "python": [0] * 3}]),
                    r"cannot restore the RNG state"),
    "history not a list": (_set("history", {"a": 1}), r"field 'history' must be a list"),
    "not json": (lambda f: (ckpt.latest(f) / "state.json").write_text("{step: 4"),
                 r"unreadable checkpoint state"),
    "nan weights": (_nan_weights, r"holds (NaN or inf|\d+ NaN/inf values)"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_damaged_checkpoint_is_refused_naming_the_field(case, finished, tmp_path, digits):
    folder = _copy(finished, tmp_path)
    damage, message = CORRUPTIONS[case]
    damage(folder)
    with pytest.raises(SpruceError, match=message) as err:
        train(TrainConfig(**RUN, checkpoint_dir=str(folder), resume=True), data=digits)
    assert str(folder) in str(err.value)
    assert not (folder / LOCK_NAME).exists()  # the lock went with the failed run


def test_nan_weights_are_never_checkpointed(tmp_path, digits, monkeypatch):
    step = runner.Trainer.train_step

    def poisoned(self, batch):  # the 4th step leaves NaN weights behind a finite loss
        loss = step(self, batch)
        if self.step == 3:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return loss

    monkeypatch.setattr(runner.Trainer, "train_step", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"NaN or inf after step 4; no checkpoint was "
                                            r"written, the last good checkpoint is .*step_0+2"):
        train(TrainConfig(**RUN, checkpoint_dir=str(tmp_path)), data=digits)
    assert ckpt.latest(tmp_path).name == ckpt.step_dir_name(2)
    model = spruce.load(ckpt.latest(tmp_path) / "model.safetensors", TinyCNN())
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_live_lock_fails_fast_naming_folder_and_pid(tmp_path, digits):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_NAME).write_text(f"{holder.pid} {os.uname().nodename}\n")
        t0 = time.perf_counter()
        with pytest.raises(SpruceError, match=rf"{tmp_path} is in use by process "
                                              rf"{holder.pid}"):
            train(TrainConfig(**RUN, checkpoint_dir=str(tmp_path), resume=True), data=digits)
        assert time.perf_counter() - t0 < 5
        assert (tmp_path / LOCK_NAME).read_text().split()[0] == str(holder.pid)  # untouched
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over(tmp_path, digits):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / LOCK_NAME).write_text(f"{gone.pid} {os.uname().nodename}\n")
    result = train(TrainConfig(**RUN, checkpoint_dir=str(tmp_path)), data=digits)
    assert result.steps == 4 and not (tmp_path / LOCK_NAME).exists()


def test_lock_is_exclusive_within_the_folder(tmp_path):
    with FolderLock(tmp_path) as first:
        assert (tmp_path / LOCK_NAME).read_text().split()[0] == str(os.getpid())
        with pytest.raises(SpruceError, match=f"in use by process {os.getpid()}"):
            FolderLock(tmp_path).acquire()
        assert first.held
    assert not (tmp_path / LOCK_NAME).exists()


def test_failed_final_save_keeps_the_model_in_the_checkpoint_folder(tmp_path, digits,
                                                                  monkeypatch):
    out = tmp_path / "out" / "model.safetensors"
    real = runner.save_model

    def failing(model, path, **kw):
        if Path(path) == out:
            raise OSError(28, "No space left on device")
        return real(model, path, **kw)

    monkeypatch.setattr(runner, "save_model", failing)
    ckpt_dir = tmp_path / "ckpt"
    with pytest.raises(OutputNotWritten, match="No space left.*kept at") as err:
        train(TrainConfig(**RUN, checkpoint_dir=str(ckpt_dir), output=str(out)), data=digits)
    kept = Path(err.value.kept_at)
    assert kept.parent == ckpt_dir and str(kept) in str(err.value)
    model = spruce.load(kept, TinyCNN())
    final = spruce.load(ckpt.latest(ckpt_dir) / "model.safetensors", TinyCNN())
    for a, b in zip(model.state_dict().values(), final.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_without_checkpoint_folder_the_final_model_goes_to_a_new_temporary_folder(tmp_path):
    written = []

    def save(path):
        if Path(path) == tmp_path / "m.safetensors":
            raise PermissionError(13, "Permission denied")
        Path(path).write_text("model")
        written.append(Path(path))

    with pytest.raises(OutputNotWritten, match="Permission denied.*kept at") as err:
        save_or_keep(save, str(tmp_path / "m.safetensors"), None)
    assert written == [Path(err.value.kept_at)] and written[0].read_text() == "model"
    assert written[0].parent.name.startswith("spruce-final-")
    shutil.rmtree(written[0].parent)


def test_output_and_checkpoint_dir_checked_before_training(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpruceError, match="is a folder; give a file name"):
        train(TrainConfig(**RUN, output=str(tmp_path)))
    with pytest.raises(SpruceError, match="which is a file, not a folder"):
        train(TrainConfig(**RUN, checkpoint_dir=str(tmp_path / "file" / "ckpt")))


def _converted(tmp_path: Path) -> Path:
    net = nn.Sequential(nn.Linear(16, 16))
    spruce.prune(net, "group", 0.5)
    return spruce.save(spruce.convert(net, "dense"), tmp_path / "fast.safetensors")


def test_init_from_a_converted_file_is_refused(tmp_path, digits):
    with pytest.raises(SpruceError, match="converted model.*start from the pruned or dense"):
        train(TrainConfig(**RUN, init=str(_converted(tmp_path))), data=digits)


def test_init_weights_are_used(tmp_path, digits):
    start = TinyCNN()
    with torch.no_grad():
        for p in start.parameters():
            p.fill_(0.01)
    spruce.prune(start, "group", 0.5, exclude=["*fc*", "*head*", "*classifier*"])
    path = spruce.save(start, tmp_path / "start.safetensors")
    result = train(TrainConfig(**{**RUN, "steps": 1, "checkpoint_every": 0}, init=str(path),
                               lr=1e-9, output=str(tmp_path / "end.safetensors")), data=digits)
    assert result.density < 1.0  # the masks came from --init
    end = spruce.load(tmp_path / "end.safetensors", TinyCNN())
    for a, b in zip(start.parameters(), end.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)  # started from --init, not from random


def test_prune_start_after_the_last_step_is_an_error(digits):
    with pytest.raises(SpruceError, match=r"--prune-start 100 is after the run's last step "
                                          r"\(3\)"):
        train(TrainConfig(**{**RUN, "steps": 3}, pattern="group", density=0.5,
                          prune_start=100), data=digits)


# -- Ctrl-C -------------------------------------------------------------------------------
SCRIPT = """
import sys, time
from spruce.train import runner
step = runner.Trainer.train_step
runner.Trainer.train_step = lambda self, batch: (time.sleep(0.3), step(self, batch))[1]
sys.argv = ["spruce", "train", *sys.argv[1:]]
from spruce.cli import main
main()
"""


def _spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _when_checkpointed(proc: subprocess.Popen, folder: Path) -> None:
    deadline = time.time() + 120
    while not (folder / ckpt.POINTER).is_file():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0].decode()
        time.sleep(0.05)


ARGS = ["tiny_cnn", "--steps", "12", "-b", "32", "--checkpoint-every", "2", "--threads", "1",
        "--no-progress"]


def test_first_ctrl_c_checkpoints_and_exits_then_resume_finishes(tmp_path):
    folder = tmp_path / "ckpt"
    proc = _spawn([*ARGS, "--checkpoint-dir", str(folder)])
    _when_checkpointed(proc, folder)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130, out
    assert "interrupted after step" in out and "continue with --resume" in out
    state = ckpt.read_state(ckpt.latest(folder))
    assert 2 <= state["step"] < 12
    assert f"step {state['step']} of 12" in out  # the checkpoint is of the step it stopped at
    assert not (folder / LOCK_NAME).exists()
    from typer.testing import CliRunner

    from spruce.cli import app

    res = CliRunner(env={"COLUMNS": "200"}).invoke(
        app, ["train", *ARGS, "--checkpoint-dir", str(folder), "--resume"])
    assert res.exit_code == 0, res.output
    assert ckpt.read_state(ckpt.latest(folder))["step"] == 12


def test_second_ctrl_c_exits_at_once_keeping_the_last_checkpoint(tmp_path):
    folder = tmp_path / "ckpt"
    proc = _spawn([*ARGS, "--checkpoint-dir", str(folder)])
    _when_checkpointed(proc, folder)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130, out
    assert "stopped at once" in out
    assert ckpt.read_state(ckpt.latest(folder))["step"] >= 2  # still readable
