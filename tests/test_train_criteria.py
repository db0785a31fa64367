"""During-training criteria: SR-STE (N:M), block gates, DST thresholds (group)."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import spruce
from spruce.criteria import get_criterion
from spruce.criteria.during_training import (DST, SRSTE, BlockGate, GateMask, SRSTEMask,
                                             ThresholdMask, nm_mask)
from spruce.masks import get_mask, mask_info
from spruce.patterns import get_pattern
from spruce.train import TinyCNN, TrainConfig
from spruce.train.sparsity import Sparsifier


def _during(pattern, criterion, **kw):
    cfg = TrainConfig(pattern=pattern, prune_mode="during", criterion=criterion,
                      exclude=("fc",), **kw).validated()
    return Sparsifier(cfg, total_steps=100)


def test_nm_mask_matches_the_vector_pattern():
    w = torch.randn(6, 27)  # K = 27: six runs of 4 and a partial run of 3
    ref = get_pattern("2:4").compute_mask(w.abs())
    assert torch.equal(nm_mask(w, 2, 4), ref)


def test_srste_forward_is_masked_and_backward_refines():
    lam = 0.1
    w = torch.randn(4, 8, requires_grad=True)
    p = SRSTEMask(2, 4, lam)
    out = p(w)
    mask = nm_mask(w, 2, 4)
    assert torch.equal(out, w.detach() * mask)
    g = torch.randn(4, 8)
    out.backward(g)
    # straight through for every dense weight, plus λ·w on the pruned ones
    assert torch.allclose(w.grad, g + lam * (~mask) * w.detach())


def test_gates_start_open_clip_and_fold_in():
    ids, n = get_pattern("block", block=(2, 2)).group_ids((4, 4))
    p = GateMask(ids, n, lam=0.5)
    w = torch.randn(4, 4)
    assert torch.equal(p(w), w)  # gates start at 1
    assert float(p.regularizer().detach()) == pytest.approx(0.5 * n)
    with torch.no_grad():
        p.gate.copy_(torch.tensor([1.5, 0.5, -0.2, 0.0]))
    p.after_step()
    assert p.gate.tolist() == [1.0, 0.5, 0.0, 0.0]
    keep = p.keep_mask(w)
    assert keep[:2, :2].all() and keep[:2, 2:].all() and not keep[2:].any()
    assert torch.equal(p.bake(w) * keep, p(w))  # baking the gates keeps the function


def test_dst_threshold_masks_groups_and_resets():
    ids, n = get_pattern("group").group_ids((3, 4))
    p = ThresholdMask(ids, n, alpha=1e-2)
    w = torch.tensor([[1.0, 0.1, 2.0, 0.2]] * 3, requires_grad=True)
    assert torch.equal(p(w), w)  # t = 0 keeps every group
    with torch.no_grad():
        p.threshold.fill_(0.5)
    out = p(w)
    assert torch.equal(out[:, [1, 3]], torch.zeros(3, 2))  # columns with mean |w| < 0.5
    (out.sum() + p.regularizer()).backward()
    assert p.threshold.grad is not None and torch.isfinite(p.threshold.grad)
    with torch.no_grad():
        p.threshold.fill_(5.0)  # would prune everything: reset to 0 first (as DST does)
    assert torch.equal(p(w), w) and float(p.threshold.detach()) == 0.0


def test_long_tailed_step_gradient():
    from spruce.criteria.during_training import _LongTailedStep

    x = torch.tensor([-2.0, -0.5, 0.0, 0.2, 0.9], requires_grad=True)
    y = _LongTailedStep.apply(x)
    assert y.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    y.sum().backward()
    assert torch.allclose(x.grad, torch.tensor([0.0, 0.4, 2.0, 1.2, 0.4]))


@pytest.mark.parametrize("pattern, criterion", [("2:4", "sr-ste"), ("block", "block-gate"),
                                                ("group", "dst")])
def test_finalize_gives_exact_structure_masks_and_same_outputs(pattern, criterion, tmp_path):
    model = TinyCNN()
    sp = _during(pattern, criterion, block=(4, 4))
    trainables = sp.prepare(model)
    assert len(trainables) == 4  # every conv/linear but the excluded classifier
    with torch.no_grad():  # move the learned masks away from "keep all"
        for layer in spruce.masked_layers(model).values():
            t, w = layer.parametrizations.weight[1], layer.parametrizations.weight.original
            if isinstance(t, GateMask):
                t.gate.copy_((torch.rand_like(t.gate) - 0.3).clamp(0, 1))
            if isinstance(t, ThresholdMask):  # the median column mean |w|: half the groups
                t.threshold.fill_(float(w.reshape(w.shape[0], -1).abs().mean(0).median()))
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    sp.finalize(model)
    assert not any(isinstance(m, (GateMask, ThresholdMask, SRSTEMask)) for m in model.modules())
    assert torch.allclose(model(x), before, atol=1e-5)
    pat = get_pattern(pattern, **({"block": (4, 4)} if pattern == "block" else {}))
    for name, layer in spruce.masked_layers(model).items():
        assert pat.conforms(get_mask(layer)) is None, name
        assert mask_info(layer)["patterns"] == [pat.spec()]
    assert spruce.density_of(model) < 1.0
    path = spruce.save(model, tmp_path / "m.safetensors")  # backends/loaders accept it
    fresh = spruce.load(path, TinyCNN())
    assert torch.allclose(fresh(x), before, atol=1e-5)


def test_registry_and_use_with_prune():
    assert isinstance(get_criterion("sr-ste"), SRSTE)
    assert isinstance(get_criterion({"name": "block-gate", "lam": 0.1}), BlockGate)
    dst = get_criterion({"name": "dst", "alpha": 0.2})
    assert isinstance(dst, DST) and dst.spec() == {"name": "dst", "alpha": 0.2}
    model = TinyCNN()
    report = spruce.prune(model, "2:4", criterion="sr-ste", exclude=["fc"])
    assert report.overall_density == pytest.approx(0.5, abs=0.01)


def test_mode_and_criterion_must_agree():
    with pytest.raises(ValueError, match="during-training criterion"):
        _during("group", "magnitude")
    with pytest.raises(ValueError, match="works with the vector"):
        _during("group", "sr-ste")
    with pytest.raises(ValueError, match="use prune_mode 'during'"):
        Sparsifier(TrainConfig(pattern="group", density=0.5, criterion="dst").validated(), 10)


def test_trainable_masks_train_and_keep_parameters_identity():
    model = TinyCNN()
    sp = _during("group", {"name": "dst", "alpha": 1e-3})
    [t.threshold for t in sp.prepare(model)]
    conv = model.features[0][0]
    assert parametrize.is_parametrized(conv, "weight")
    assert isinstance(conv.parametrizations.weight[1], ThresholdMask)
    loss = model(torch.randn(2, 3, 32, 32)).sum()
    loss.backward()
    assert conv.parametrizations.weight.original.grad is not None
    assert conv.parametrizations.weight[1].threshold.grad is not None
    assert isinstance(conv, nn.Conv2d)
