"""spruce.prune's smaller input cases: one exclude glob as a string, layers already under
torch.nn.utils.prune / weight_norm / spectral_norm, empty layers, meta-device models,
override globs that match nothing. All are SpruceErrors raised before the first mask."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations
from torch.nn.utils import prune as torch_prune

import spruce
from spruce.errors import SpruceError
from spruce.masks import masked_layers


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
                         nn.Linear(8, 4))


def test_exclude_takes_one_glob_as_a_string():
    net = nn.Sequential()
    net.add_module("fc", nn.Linear(4, 4))
    net.add_module("f", nn.Linear(4, 4))
    net.add_module("c", nn.Linear(4, 4))
    report = spruce.prune(net, "element", 0.5, exclude="fc")
    assert [r.name for r in report.rows] == ["f", "c"]
    assert [(s.name, s.reason) for s in report.skipped] == [("fc", "excluded by the caller")]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # the older torch.nn.utils wrappers
@pytest.mark.parametrize("wrap,what", [
    (lambda m: torch_prune.l1_unstructured(m, "weight", amount=0.5), "L1Unstructured"),
    (lambda m: torch.nn.utils.weight_norm(m), "WeightNorm"),
    (lambda m: torch.nn.utils.spectral_norm(m), "SpectralNorm"),
    (lambda m: parametrizations.weight_norm(m), "_WeightNorm"),
    (lambda m: parametrizations.spectral_norm(m), "_SpectralNorm"),
])
def test_layer_under_another_reparametrization_fails_before_any_mask(wrap, what):
    net = mlp()
    wrap(net[2])
    with pytest.raises(SpruceError, match=rf"layer '2'.*{what}.*exclude=\['2'\]"):
        spruce.prune(net, "element", 0.5)
    assert not masked_layers(net)  # layer 0 came first and was not touched
    report = spruce.prune(net, "element", 0.5, exclude=["2"])
    assert [r.name for r in report.rows] == ["0", "4"]


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_empty_layer_is_skipped_and_a_model_of_only_empty_layers_is_an_error():
    net = nn.Sequential(nn.Linear(0, 4), nn.Linear(4, 4))
    report = spruce.prune(net, "element", 0.5)
    assert [r.name for r in report.rows] == ["1"]
    assert report.skipped[0].name == "0" and "empty weight" in report.skipped[0].reason
    with pytest.raises(SpruceError, match="no prunable layers"):
        spruce.prune(nn.Sequential(nn.Linear(0, 4)), "element", 0.5)


def test_meta_device_model_is_an_error_naming_the_layer():
    with torch.device("meta"):
        net = mlp()
    with pytest.raises(SpruceError, match=r"layer '0'.*meta device.*to_empty"):
        spruce.prune(net, "element", 0.5)
    assert not masked_layers(net)


def test_override_glob_matching_nothing_is_an_error():
    net = mlp()
    with pytest.raises(SpruceError, match=r"override 'encoder\.\*' matches no prunable layer"):
        spruce.prune(net, "element", 0.5, overrides={"encoder.*": 0.3})
    assert not masked_layers(net)
    report = spruce.prune(net, "element", 0.5, overrides={"4": 0.25})
    assert report.rows[-1].kept == 8


def test_module_with_unknown_weights_is_reported():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.randn(4, 4))
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x @ self.table)

    report = spruce.prune(Gate(), "element", 0.5)
    assert [r.name for r in report.rows] == ["fc"]
    assert report.skipped[0].name == ""
    assert "Gate holds weights (table)" in report.skipped[0].reason
