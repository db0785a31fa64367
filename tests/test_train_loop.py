"""Training on digits (scikit-learn's built-in real dataset) with the demo TinyCNN, on CPU."""

import json

import pytest
import torch
from typer.testing import CliRunner

import spruce
from spruce import data
from spruce.train import NonFiniteLoss, TinyCNN, TrainConfig, train
from spruce.train import checkpoint as ckpt
from spruce.train.sparsity import Sparsifier

FAST = dict(model="tiny_cnn", data="digits", threads=1, progress=False, seed=0)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory, digits):
    """TinyCNN trained dense on digits: 8 epochs, SGD 0.05, cosine (176 steps)."""
    out = tmp_path_factory.mktemp("dense") / "dense.safetensors"
    result = train(TrainConfig(**FAST, epochs=8, lr=0.05, output=str(out)), data=digits)
    return result, out


def test_digits_dense_reaches_93_percent_in_under_a_minute(dense_run):
    """Stated accuracy: >= 93% top-1 on the 360 held-out digits, with the
    training itself under 60 s on one CPU thread (measured: 98.1% in ~3-5 s)."""
    result, out = dense_run
    assert result.accuracy >= 0.93
    assert result.wall_s < 60
    assert result.steps == 8 * (1437 // 64) and result.density == 1.0
    header = spruce.io.read_header(out)
    assert header["train"]["metrics"]["top1"] == pytest.approx(result.accuracy)


def test_group_half_oneshot_finetune_recovers_within_2_percent(dense_run, digits, tmp_path):
    """Group-wise at 50% kept (classifier dense), one-shot from the dense model, then 4
    epochs of fine-tuning: within 2 points of dense top-1."""
    dense, dense_path = dense_run
    result = train(TrainConfig(**FAST, epochs=4, lr=0.01, init=str(dense_path), pattern="group",
                               density=0.5, prune_mode="oneshot", exclude=("fc",),
                               output=str(tmp_path / "g.safetensors")), data=digits)
    assert result.accuracy >= dense.accuracy - 0.02
    model = spruce.load(tmp_path / "g.safetensors", TinyCNN())
    for layer in spruce.masked_layers(model).values():
        assert float(spruce.get_mask(layer).float().mean()) == pytest.approx(0.5, abs=0.02)


def test_gradual_schedule_hits_target_density_exactly_at_end_step(digits):
    """Masks only shrink from event to event, and at ``prune_end`` every layer keeps exactly
    what a one-shot prune to the final density keeps."""
    cfg = TrainConfig(**FAST, epochs=2, pattern="element", density=0.3, prune_mode="gradual",
                      prune_start=4, prune_end=30, prune_every=5).validated()
    model = TinyCNN()
    sp = Sparsifier(cfg, total_steps=44)
    assert sorted(sp.events) == [9, 14, 19, 24, 29, 30]
    previous = None
    for step in range(45):
        sp.step(model, step)
        masks = {n: spruce.get_mask(m).clone() for n, m in spruce.masked_layers(model).items()}
        if previous:
            assert all(bool((masks[n] <= previous[n]).all()) for n in masks)  # only shrink
        previous = masks
        if step == 29:
            assert spruce.density_of(model) > 0.3
    reference = TinyCNN()
    spruce.prune(reference, "element", 0.3)
    assert spruce.density_of(model) == spruce.density_of(reference)
    assert {n: int(m.sum()) for n, m in previous.items()} == \
        {n: int(spruce.get_mask(m).sum()) for n, m in spruce.masked_layers(reference).items()}


def test_gradual_run_reports_final_density_from_end_step_on(digits):
    result = train(TrainConfig(**FAST, epochs=3, pattern="group", density=0.5,
                               prune_mode="gradual", prune_end=44), data=digits)
    densities = [row["density"] for row in result.history]
    assert densities[0] > densities[1] == densities[2] == result.density
    assert result.density == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("pattern, criterion, epochs", [
    ("2:4", "sr-ste", 2),
    # the gates all shrink at the L1 rate unless the loss resists: they need a run long
    # enough to tell blocks apart (10 epochs at lam=0.02 keep 30-40% over seeds 0-2)
    ("block", {"name": "block-gate", "lam": 0.02}, 10),
    ("group", {"name": "dst", "alpha": 0.1}, 10)])
def test_during_training_criteria_learn_masks(pattern, criterion, epochs, digits, tmp_path):
    result = train(TrainConfig(**FAST, epochs=epochs, pattern=pattern, block=(4, 4),
                               prune_mode="during", criterion=criterion, exclude=("fc",),
                               output=str(tmp_path / "m.safetensors")), data=digits)
    assert result.density < 0.9  # the paper's methods reach no fixed density: reported
    assert result.accuracy > 0.8
    spruce.load(tmp_path / "m.safetensors", TinyCNN())  # exact-structure masks, checked


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(digits, tmp_path):
    cfg = TrainConfig(**FAST, epochs=1, lr=1e6, checkpoint_dir=str(tmp_path), checkpoint_every=1)
    with pytest.raises(NonFiniteLoss, match=r"at step \d+ \(epoch 0, batch \d+\).*step_0+\d"):
        train(cfg, data=digits)
    last = ckpt.latest(tmp_path)
    assert last is not None
    state = ckpt.read_state(last)
    model = spruce.load(last / "model.safetensors", TinyCNN())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert state["step"] >= 1


def test_class_count_mismatch(digits):
    with pytest.raises(ValueError, match="outputs 5 classes but the digits data"):
        train(TrainConfig(**FAST, epochs=1), model=TinyCNN(num_classes=5), data=digits)


def test_resume_refuses_another_pattern_or_model(digits, tmp_path):
    base = dict(**FAST, epochs=1, pattern="group", density=0.5, checkpoint_dir=str(tmp_path))
    train(TrainConfig(**base), data=digits)
    with pytest.raises(ValueError, match=r"pattern: checkpoint 'group', now 'element'"):
        train(TrainConfig(**{**base, "pattern": "element", "resume": True}), data=digits)
    with pytest.raises(ValueError, match="do not match model"):
        train(TrainConfig(**base, resume=True), model=TinyCNN(width=8), data=digits)
    with pytest.raises(FileExistsError, match="pass --resume"):
        train(TrainConfig(**base), data=digits)
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        train(TrainConfig(**{**base, "checkpoint_dir": str(tmp_path / "x"), "resume": True}))


def test_cli_train_writes_model_logs_and_curve(tmp_path):
    import typer

    from spruce.cli.training import train_cmd

    app = typer.Typer()
    app.command()(train_cmd)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["tiny_cnn", "--data", "digits", "--epochs", "1", "-p", "2:4",
                                   "-x", "fc", "--threads", "1", "--no-progress",
                                   "--checkpoint-dir", str(out), "-o", str(out / "m.safetensors")])
    assert res.exit_code == 0, res.output
    assert "top1" in res.output
    for name in ("train_log.csv", "eval_log.csv", "curves.png", "results.json", "last"):
        assert (out / name).is_file(), name
    assert json.loads((out / "results.json").read_text())["steps"] == 22
    spruce.load(out / "m.safetensors", TinyCNN())
    bad = CliRunner().invoke(app, ["tiny_cnn", "--data", str(tmp_path / "missing")])
    assert bad.exit_code == 2 and "does not exist" in " ".join(bad.output.split())


class BagOfWords(torch.nn.Module):
    """A tiny text classifier taking HF-style inputs (input_ids, attention_mask, ...)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.EmbeddingBag(30522, 16, mode="sum")
        self.fc = torch.nn.Linear(16, 2)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return self.fc(self.emb(input_ids, per_sample_weights=attention_mask.float()))


def test_qqp_reports_accuracy_and_f1(tmp_path):
    from tests.test_data_readers import write_qqp

    result = train(TrainConfig(model="bow", data=str(write_qqp(tmp_path)), epochs=2,
                               batch_size=1, lr=0.1, pattern="element", density=0.5,
                               threads=1, progress=False), model=BagOfWords())
    assert set(result.metrics) == {"loss", "accuracy", "f1"}
    assert 0.0 <= result.metrics["f1"] <= 1.0 and result.density < 1.0


def test_file_dataset_trains_through_dataloader_workers(tmp_path):
    from tests.test_data_readers import write_imagenet

    root = write_imagenet(tmp_path / "imagenet", per_class=4)
    result = train(TrainConfig(model="tiny_cnn", data=str(root), dataset_format="imagenet",
                               image_size=32, epochs=1, batch_size=4, workers=1, threads=1,
                               progress=False))
    assert result.steps == 2 and set(result.metrics) == {"loss", "top1", "top5"}
