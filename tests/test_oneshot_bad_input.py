"""One-shot criteria on bad input: clear SpruceErrors naming the layer, the value and the
fix, and the model left as it was."""

import copy

import pytest
import torch
from torch import nn

import spruce
from spruce.criteria import SparseGPT
from spruce.errors import SpruceError
from spruce.masks import masked_layers


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def same_as(model, ref):
    return not masked_layers(model) and all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                          ref.state_dict().values(), strict=True))


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_no_calibration(criterion):
    model = net()
    with pytest.raises(SpruceError, match="needs calibration data.*calibration="):
        spruce.prune(model, "element", 0.5, criterion=criterion)
    with pytest.raises(SpruceError, match="yielded no batch"):
        spruce.prune(model, "element", 0.5, criterion=criterion, calibration=[])
    with pytest.raises(SpruceError, match=r"iterable of batches.*calibration=\[x\]"):
        spruce.prune(model, "element", 0.5, criterion=criterion, calibration=torch.ones(2, 8))
    assert not masked_layers(model)


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_calibration_of_the_wrong_shape(criterion):
    model = net()
    ref = copy.deepcopy(model)
    with pytest.raises(SpruceError, match=r"fails on calibration batch 1 \(shapes \(4, 7\)\)"
                       ".*like example_input"):
        spruce.prune(model, "2:4", criterion=criterion,
                     calibration=[torch.randn(4, 8), torch.randn(4, 7)])
    assert same_as(model, ref)


def test_singular_hessian_needs_damping():
    model = net()
    x = torch.randn(64, 8)
    x[:, 1] = x[:, 0]  # two identical input features: H is singular
    ref = copy.deepcopy(model)
    with pytest.raises(SpruceError, match=r"layer '0'.*singular with damp=0.*use damp > 0"):
        spruce.prune(model, "2:4", criterion=SparseGPT(damp=0.0), calibration=[x])
    assert same_as(model, ref)
    report = spruce.prune(model, "2:4", criterion=SparseGPT(), calibration=[x])
    assert report.overall_density == 0.5
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_singular_hessian_of_a_later_layer_restores_the_earlier_ones():
    model = net()
    with torch.no_grad():
        model[0].weight[1] = model[0].weight[0]  # layer 2 gets two identical features
        model[0].bias[1] = model[0].bias[0]
    ref = copy.deepcopy(model)
    x = torch.randn(64, 8)
    with pytest.raises(SpruceError, match="layer '2'.*singular"):
        spruce.prune(model, "element", 0.9, criterion=SparseGPT(damp=0.0), calibration=[x])
    assert same_as(model, ref)  # layer 0 had already been solved: its weights came back


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_nan_activations(criterion):
    model = net()
    x = torch.randn(4, 8)
    x[2, 3] = float("nan")
    with pytest.raises(SpruceError, match=r"layer '0'.*1 calibration activation\(s\).*NaN"
                       r".*exclude=\['0'\]"):
        spruce.prune(model, "element", 0.5, criterion=criterion, calibration=[x])


def test_bad_options_and_scopes():
    with pytest.raises(SpruceError, match="damp must be a number >= 0"):
        SparseGPT(damp=-1)
    with pytest.raises(SpruceError, match="blocksize must be a positive integer"):
        SparseGPT(blocksize=0)
    with pytest.raises(SpruceError, match="scope='uniform'"):
        spruce.prune(net(), "element", 0.5, criterion="wanda", scope="global",
                     calibration=[torch.randn(4, 8)])


def test_reconstruct_needs_masks():
    from spruce.criteria import reconstruct
    with pytest.raises(SpruceError, match="no spruce mask"):
        reconstruct(net(), [torch.randn(4, 8)])
