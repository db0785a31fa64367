"""The training loop's hooks: an objective in place of the cross-entropy, an evaluator in
place of the classification metrics, a step budget, and splits of any batches."""

from __future__ import annotations

import copy
import csv
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spruce import data
from spruce.data import DataSplits, Samples, TensorDict, pad_collate
from spruce.learned import LearnedSpec, attach_learned, learned_layers
from spruce.train import NonFiniteLoss, TrainConfig, hooks, lr_at, train
from spruce.train import checkpoint as ckpt

QUIET = dict(threads=1, progress=False, seed=0)
MASKS = dict(**QUIET, optimizer="adamw", lr=0.05, momentum=0.9, weight_decay=0.0)


def mlp(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))


def distil(net: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.mse_loss(net(batch["x"]), batch["teacher"])


def distillation_task(n: int = 256):
    """A dense MLP, its 2:4 student (learned masks, weights frozen) and the data."""
    dense = mlp()
    gen = torch.Generator().manual_seed(0)
    x, held = torch.randn(n, 16, generator=gen), torch.randn(128, 16, generator=gen)
    with torch.no_grad():
        split = TensorDict({"x": x, "teacher": dense(x)})
        held_target = dense(held)
    student = copy.deepcopy(dense)
    attach_learned(student, LearnedSpec(tau=1.0, tau_end=0.1, tau_schedule="exp",
                                        anneal_steps=100, hard=True))

    def evaluator(model: nn.Module) -> dict[str, float]:
        assert not model.training and not torch.is_grad_enabled()
        return {"heldout_mse": float(F.mse_loss(model(held), held_target))}

    return dense, student, split, evaluator


def test_objective_trains_learned_masks_and_reports_the_evaluator(tmp_path):
    dense, student, split, evaluator = distillation_task()
    weights = {n: p.detach().clone() for n, p in student.named_parameters()
               if not n.endswith("logits")}
    start = hooks.run_evaluator(evaluator, student)
    result = train(TrainConfig(**MASKS, steps=150, batch_size=64, eval_every=50,
                               checkpoint_dir=str(tmp_path)),
                   student, split, objective=distil, evaluator=evaluator)
    assert result.steps == 150 and result.epochs == math.ceil(150 / 4)
    assert [r["step"] for r in result.history] == [50, 100, 150]
    assert all("heldout_mse" in r and r["density"] == 0.5 for r in result.history)
    assert result.metrics == {"heldout_mse": pytest.approx(result.history[-1]["heldout_mse"])}
    assert result.accuracy == result.metrics["heldout_mse"]  # the evaluator's first key
    assert result.metrics["heldout_mse"] < 0.8 * start["heldout_mse"]
    assert result.log[-1]["loss"] < result.log[0]["loss"]
    for name, p in student.named_parameters():  # only the logits trained
        assert name.endswith("logits") or (torch.equal(p, weights[name])
                                           and not p.requires_grad)
    assert all(int(m.step) == 150 for m in learned_layers(student).values())  # τ schedule
    with open(tmp_path / "eval_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [50, 100, 150] and "heldout_mse" in rows[0]
    assert (tmp_path / "curves.png").is_file() and (tmp_path / "results.json").is_file()
    assert student(torch.zeros(1, 16)).shape == (1, 8)  # masks still attached, not hardened


def test_step_budget_ends_part_way_through_an_epoch():
    """10 samples, batch 4: 2 steps per epoch; 5 steps = 2 epochs and one step of a third.
    The LR schedule spans the 5 steps; evaluations at epoch ends and at the last step."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    split = TensorDict({"x": torch.randn(10, 3), "y": torch.randn(10, 2)})
    result = train(TrainConfig(**QUIET, steps=5, batch_size=4, lr=0.1, log_every=100), model,
                   split, objective=lambda net, b: F.mse_loss(net(b["x"]), b["y"]),
                   evaluator=lambda m: {"norm": float(m.weight.norm())})
    assert result.steps == 5 and result.epochs == 3
    assert [r["step"] for r in result.history] == [2, 4, 5]
    assert [r["step"] for r in result.log] == [2, 4, 5]  # epoch ends and the last step
    assert result.log[-1]["lr"] == pytest.approx(lr_at(4, 5, 0.1, "cosine"))


def test_objective_equal_to_cross_entropy_trains_like_the_default():
    """The hook replaces the loss and nothing else: the CE as an objective gives the
    default run's losses and weights, bit for bit."""
    digits = data.load("digits")
    cfg = TrainConfig(**QUIET, model="tiny_cnn", data="digits", steps=6, log_every=1,
                      deterministic=True)
    default = train(cfg, data=digits)
    hooked = train(cfg, data=digits,
                   objective=lambda net, b: F.cross_entropy(net(b[0]).float(), b[1]))
    assert [r["loss"] for r in hooked.log] == [r["loss"] for r in default.log]
    # no evaluator: the mean objective over the test split, i.e. the held-out CE
    assert hooked.metrics["loss"] == pytest.approx(default.metrics["loss"], rel=1e-5)
    assert set(default.metrics) == {"loss", "top1", "top5"}


def test_resumed_run_with_the_same_hooks_equals_the_uninterrupted_one(tmp_path):
    run = dict(**MASKS, steps=12, batch_size=16, eval_every=4, checkpoint_every=5,
               keep_checkpoints=100, deterministic=True)
    _, student, split, evaluator = distillation_task(64)
    fresh = copy.deepcopy(student)
    full = train(TrainConfig(**run, checkpoint_dir=str(tmp_path / "full")), student, split,
                 objective=distil, evaluator=evaluator)
    mid = tmp_path / "full" / ckpt.step_dir_name(5)  # epoch 1 of 4-step epochs, batch 1
    shutil.copytree(mid, tmp_path / "part" / mid.name)
    part = train(TrainConfig(**run, checkpoint_dir=str(tmp_path / "part"), resume=True),
                 fresh, split, objective=distil, evaluator=evaluator)
    assert part.resumed_from and part.steps == 12
    assert part.history == full.history  # the evaluations before step 5 came back too
    for (name, a), b in zip(learned_layers(student).items(),
                            learned_layers(fresh).values(), strict=True):
        assert torch.equal(a.logits, b.logits) and int(a.step) == int(b.step) == 12, name
    assert [r["step"] for r in part.log] == [8, 10, 12]  # rows logged by the resumed run


def test_a_checkpoint_resumes_only_with_the_hooks_it_was_written_with():
    with_objective = {"hooks": hooks.hook_names(distil, None)}
    hooks.check_hooks(with_objective, distil, "ckpt")
    hooks.check_hooks({}, None, "ckpt")  # written before the hooks existed
    with pytest.raises(ValueError, match="trained with the objective distil"):
        hooks.check_hooks(with_objective, None, "ckpt")
    with pytest.raises(ValueError, match="resumed with an objective"):
        hooks.check_hooks({"hooks": hooks.hook_names(None, None)}, distil, "ckpt")


def test_bad_objectives_and_evaluators_are_named():
    split = TensorDict({"x": torch.randn(8, 3)})
    model = nn.Linear(3, 2)
    cfg = TrainConfig(**QUIET, steps=1, batch_size=4)
    with pytest.raises(ValueError, match=r"shape \(4, 2\).*scalar"):
        train(cfg, model, split, objective=lambda net, b: net(b["x"]))
    with pytest.raises(NonFiniteLoss, match="training loss is nan"):
        train(cfg, model, split, objective=lambda net, b: net(b["x"]).sum() * float("nan"))
    with pytest.raises(ValueError, match="no labels"):
        train(cfg, model, split)
    with pytest.raises(ValueError, match="'step'"):
        train(cfg, model, split, objective=lambda net, b: net(b["x"]).sum(),
              evaluator=lambda m: {"step": 1.0})


def test_pad_collate_pads_token_lists_and_stacks_the_rest():
    split = Samples([{"input_ids": [5, 6, 7], "teacher": torch.ones(2)},
                     {"input_ids": [8], "teacher": torch.zeros(2)}])
    assert len(split) == 2 and len(DataSplits.of(split).train) == 2
    batch = split.batch([1, 0], seeds=[11, 12])
    assert batch["input_ids"].tolist() == [[8, 0, 0], [5, 6, 7]]
    assert batch["attention_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert batch["teacher"].shape == (2, 2) and batch["input_ids"].dtype == torch.int64
    assert pad_collate([{"ids": [1, 2]}, {"ids": [3]}], pad_value=-1,
                       mask_key=None)["ids"].tolist() == [[1, 2], [3, -1]]
    with pytest.raises(ValueError, match="empty sequence"):
        pad_collate([{"ids": []}])
    with pytest.raises(ValueError, match="first dimension"):
        TensorDict({"a": torch.zeros(3), "b": torch.zeros(4)})
