import pytest
import torch
from torch import nn

from spruce.criteria import Taylor, get_criterion, lamp_scores, names


def test_registry():
    assert names() == ["block-gate", "dst", "lamp", "learned", "magnitude", "random",
                       "sparsegpt", "sr-ste", "taylor", "wanda"]
    with pytest.raises(ValueError, match="valid: block-gate, dst, lamp, learned, magnitude, "
                                         "random, sparsegpt, sr-ste, taylor, wanda"):
        get_criterion("snip")


def test_magnitude_l1_l2():
    w = torch.tensor([[-3.0, 2.0], [0.5, -1.0]])
    assert torch.equal(get_criterion("magnitude").score(w), w.abs())
    assert torch.equal(get_criterion("magnitude", p=2).score(w), w.square())
    with pytest.raises(ValueError, match="p=1"):
        get_criterion("magnitude", p=3)


def test_lamp_matches_definition():
    w = torch.randn(5, 7)
    v = w.square().flatten().double()
    expected = torch.stack([v[u] / v[v >= v[u]].sum() for u in range(v.numel())])
    assert torch.allclose(lamp_scores(w.square()).flatten(), expected)
    s = get_criterion("lamp").score(w)
    assert float(s.max()) == pytest.approx(1.0)  # the largest entry scores 1
    # LAMP preserves the within-layer order of magnitudes
    order_w = torch.argsort(w.abs().flatten(), stable=True)
    assert torch.equal(torch.argsort(s.flatten(), stable=True), order_w)


def test_random_seeded():
    layers = {"a": nn.Linear(4, 3), "b": nn.Linear(3, 2)}
    s1 = get_criterion("random", seed=3).scores(None, layers)
    s2 = get_criterion("random", seed=3).scores(None, layers)
    s3 = get_criterion("random", seed=4).scores(None, layers)
    assert all(torch.equal(s1[k], s2[k]) for k in layers)
    assert not torch.equal(s1["a"], s3["a"])


def test_taylor_equals_w_times_grad():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    batch = (torch.randn(8, 6), torch.randint(0, 3, (8,)))
    scores = Taylor(data=[batch]).scores(model, {"0": model[0], "2": model[2]})
    loss = nn.functional.cross_entropy(model(batch[0]), batch[1])
    g = torch.autograd.grad(loss, [model[0].weight])[0]
    assert torch.allclose(scores["0"], (model[0].weight * g).abs())
    assert model[0].weight.grad is None  # no gradient left behind


def test_taylor_needs_data():
    with pytest.raises(ValueError, match="calibration data"):
        get_criterion("taylor").scores(nn.Linear(2, 2), {"": nn.Linear(2, 2)})
