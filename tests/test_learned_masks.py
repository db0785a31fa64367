"""Learned N:M masks: Gumbel choices, hardening, frozen weights, the criterion, save/load."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import spruce
from spruce.criteria import get_criterion
from spruce.data import TensorDict
from spruce.learned import (LearnedSpec, attach_learned, fit_masks, gumbel_softmax, harden,
                            init_logits, learned_layers, nm_table, tau_at)
from spruce.masks import get_mask, mask_info, original_weight
from spruce.patterns import get_pattern


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))


def test_table_has_every_2_of_4_pattern_once():
    t = nm_table(2, 4)
    assert t.shape == (6, 4) and (t.sum(1) == 2).all()
    assert len({tuple(r.tolist()) for r in t}) == 6
    assert nm_table(1, 4).shape == (4, 4) and nm_table(4, 8).shape == (70, 8)
    with pytest.raises(ValueError, match="at most"):
        nm_table(8, 16)


@given(st.integers(1, 5), st.floats(0.05, 5.0), st.booleans())
@settings(max_examples=25, deadline=None)
def test_gumbel_sample_is_a_valid_choice(seed, tau, hard):
    torch.manual_seed(seed)
    logits = torch.randn(7, 3, 6) * 3
    y = gumbel_softmax(logits, tau, hard)
    assert torch.allclose(y.sum(-1), torch.ones(7, 3), atol=1e-5)
    assert (y >= -1e-6).all()
    if hard:  # forward value is a one-hot vector (up to the rounding of y + s - s)
        one_hot = torch.nn.functional.one_hot(y.detach().argmax(-1), 6).float()
        assert torch.allclose(y.detach(), one_hot, atol=1e-6)
    soft_mask = y @ nm_table(2, 4)
    assert torch.allclose(soft_mask.sum(-1), torch.full((7, 3), 2.0), atol=1e-5)


def test_gumbel_samples_follow_the_logits():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([0.7, 0.1, 0.1, 0.05, 0.03, 0.02])).expand(4000, 6)
    y = gumbel_softmax(logits, 1.0, hard=True)
    freq = y.detach().mean(0)
    assert abs(float(freq[0]) - 0.7) < 0.05


def test_magnitude_init_argmax_is_magnitude_2_4():
    torch.manual_seed(0)
    w = torch.randn(12, 20)
    logits = init_logits(w, nm_table(2, 4), LearnedSpec())
    keep = nm_table(2, 4)[logits.argmax(-1)].reshape(12, 20).bool()
    assert torch.equal(keep, get_pattern("2:4").compute_mask(w.abs()))


@given(st.integers(1, 6), st.integers(1, 6), st.sampled_from(["magnitude", "random"]))
@settings(max_examples=15, deadline=None)
def test_hardened_masks_are_exact_2_4(rows, runs, init):
    torch.manual_seed(rows * 7 + runs)
    model = nn.Sequential(nn.Linear(4 * runs, rows), nn.Conv2d(3, 4, 2))
    attach_learned(model, LearnedSpec(init=init))
    with torch.no_grad():  # scramble the choices: hardening must not depend on them
        for m in learned_layers(model).values():
            m.logits.normal_()
    hard = harden(model)
    assert set(hard) == {"0", "1"} and not learned_layers(model)
    for name in ("0", "1"):
        mask = get_mask(model.get_submodule(name))
        assert get_pattern("2:4").conforms(mask) is None
        assert (mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2).all()
        assert mask_info(model.get_submodule(name))["criterion"]["name"] == "learned"


def test_eval_forward_equals_hardened_model():
    model = mlp()
    attach_learned(model)
    with torch.no_grad():
        for m in learned_layers(model).values():
            m.logits.normal_()
    x = torch.randn(5, 16)
    model.eval()
    before = model(x)
    harden(model)
    assert torch.allclose(model(x), before, atol=1e-6)


def distil(net: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training loop's objective hook: MSE to the teacher's outputs in the batch."""
    return (net(batch["x"]) - batch["teacher"]).square().mean()


def test_logits_get_gradients_weights_do_not():
    model = mlp()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    attach_learned(model, LearnedSpec(tau=0.5))
    model.train()
    model(torch.randn(4, 16)).square().sum().backward()
    for layer in (model[0], model[2]):
        logits = layer.parametrizations.weight[0].logits
        assert logits.grad is not None and logits.grad.abs().sum() > 0
        assert original_weight(layer).grad is None and not original_weight(layer).requires_grad
        assert layer.bias.grad is None
    x = torch.randn(64, 16)
    teacher = mlp()(x).detach()
    fit_masks(model, distil, TensorDict({"x": x, "teacher": teacher}), steps=5, progress=False)
    harden(model)
    spruce.masks.bake  # noqa: B018  (harden keeps the weights; nothing is baked)
    for n, p in model.named_parameters():
        key = n.replace("parametrizations.weight.original", "weight")
        assert torch.equal(p, weights[key]) and not p.requires_grad


def test_fit_refuses_trainable_weights():
    model = mlp()
    attach_learned(model, freeze=False)
    with pytest.raises(ValueError, match="weights still train"):
        fit_masks(model, distil, TensorDict({"x": torch.randn(4, 16),
                                             "teacher": torch.randn(4, 8)}),
                  steps=1, batch_size=2, progress=False)


def test_tiny_learn_mask_run_lowers_the_loss():
    """Distil a dense MLP into its own 2:4 version: the held-out loss of the argmax masks
    falls below magnitude 2:4's."""
    torch.manual_seed(0)
    dense = mlp(1)
    x = torch.randn(256, 16)
    target = dense(x).detach()
    student = copy.deepcopy(dense)
    attach_learned(student, LearnedSpec(tau=1.0))
    student.eval()
    start = float((student(x) - target).square().mean())
    res = fit_masks(student, distil, TensorDict({"x": x, "teacher": target}), steps=150,
                    batch_size=64, lr=0.05, progress=False)
    end = float((student(x) - target).square().mean())
    assert res.steps == 150 and end < 0.8 * start
    assert res.history[-1]["loss"] < res.history[0]["loss"]


def test_tau_schedules():
    assert tau_at(50, 1.0, 0.1, "constant", 100) == 1.0
    assert tau_at(0, 1.0, 0.1, "exp", 100) == pytest.approx(1.0)
    assert tau_at(50, 1.0, 0.1, "exp", 100) == pytest.approx(0.1 ** 0.5)
    assert tau_at(500, 1.0, 0.1, "exp", 100) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        tau_at(0, 1.0, 0.1, "linear")


def test_learned_criterion_reproduces_the_argmax_mask():
    model = mlp()
    attach_learned(model)
    with torch.no_grad():
        for m in learned_layers(model).values():
            m.logits.normal_()
    want = {n: m.hard_mask() for n, m in learned_layers(model).items()}
    crit = get_criterion("learned")
    scores = crit.scores(model, {"0": model[0], "2": model[2]})
    for name, s in scores.items():
        assert torch.equal(get_pattern("2:4").compute_mask(s), want[name])


def test_k_not_divisible_by_m_is_refused_before_any_change():
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 3), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="layer '2'.*K divisible by 4; K=3"):
        attach_learned(model)
    assert not learned_layers(model) and model[0].weight.requires_grad
    attach_learned(model, exclude=("2",))
    assert set(learned_layers(model)) == {"0", "1"}


def test_hardened_model_saves_and_loads(tmp_path):
    model = mlp()
    attach_learned(model)
    with torch.no_grad():
        for m in learned_layers(model).values():
            m.logits.normal_()
    harden(model)
    path = spruce.save(model, tmp_path / "m.safetensors")
    fresh = spruce.load(path, mlp(5))
    x = torch.randn(3, 16)
    assert torch.equal(fresh(x), model(x))
    assert torch.equal(get_mask(fresh[0]), get_mask(model[0]))


def test_trainer_learns_masks_with_labels(tmp_path):
    """The training loop's ``during`` mode with criterion 'learned', weights frozen."""
    from spruce.data.base import DataSplits, TensorImages
    from spruce.train import TrainConfig, train

    torch.manual_seed(0)
    x = torch.randn(128, 16)
    y = (x[:, :4].sum(1) > 0).long()
    split = TensorImages(x, y)
    try:
        data = DataSplits("toy", split, split, 2, "image", "toy", "toy")
    except TypeError:
        pytest.skip("DataSplits signature changed")
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2)).requires_grad_(False)
    w0 = model[0].weight.detach().clone()
    cfg = TrainConfig(model="toy", data="toy", epochs=2, batch_size=32, lr=0.05,
                      optimizer="adamw", pattern="2:4", prune_mode="during",
                      criterion={"name": "learned", "tau": 1.0}, progress=False,
                      output=str(tmp_path / "out.safetensors"))
    result = train(cfg, model=model, data=data)
    assert result.density == pytest.approx(0.5)
    assert get_pattern("2:4").conforms(get_mask(model[0])) is None
    assert torch.equal(original_weight(model[0]), w0)
