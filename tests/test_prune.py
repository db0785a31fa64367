"""prune(): allocation, masks that train, re-pruning, bake, and bad input."""

import copy

import pytest
import torch
from torch import nn

import spruce
from spruce.masks import get_mask, masked_layers, original_weight
from spruce.patterns import kept_count

PATTERNS = [("element", 0.5, {}), ("2:4", None, {}), ("block", 0.5, {"block": (2, 4)}),
            ("group", 0.5, {}), ("channel", 0.5, {})]


def test_uniform_exact_per_layer(small_net):
    report = spruce.prune(small_net, "group", 0.3)
    assert [r.name for r in report.rows] == ["conv1", "conv2", "fc1", "fc2"]
    for r in report.rows:
        assert r.kept == kept_count(0.3, r.view[1]) * r.view[0]
    assert [s.name for s in report.skipped] == ["dw"]
    assert "groups=8" in report.skipped[0].reason


@pytest.mark.parametrize("pattern,density,kw", [p for p in PATTERNS if p[1] is not None])
def test_density_one_changes_nothing(pattern, density, kw, small_net, small_input):
    ref = copy.deepcopy(small_net)
    spruce.prune(small_net, pattern, 1.0, **kw)
    out, out_ref = small_net(small_input), ref(small_input)
    assert torch.equal(out, out_ref)
    out.sum().backward()
    out_ref.sum().backward()
    ref_params = dict(ref.named_parameters())
    for n, p in small_net.named_parameters():
        plain = n.replace(".parametrizations.weight.original", ".weight")
        assert torch.equal(p.grad, ref_params[plain].grad), n


@pytest.mark.parametrize("pattern,density,kw", PATTERNS)
def test_masked_weights_are_zero_and_get_zero_grad(pattern, density, kw, small_net, small_input):
    spruce.prune(small_net, pattern, density, **kw)
    small_net(small_input).sum().backward()
    for name, layer in spruce.masked_layers(small_net).items():
        mask = layer.parametrizations.weight[0].mask
        assert (layer.weight[~mask] == 0).all(), name
        assert (original_weight(layer).grad[~mask] == 0).all(), name


def test_training_step_keeps_masks(small_net, small_input):
    spruce.prune(small_net, "element", 0.4)
    opt = torch.optim.SGD(small_net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        small_net(small_input).square().mean().backward()
        opt.step()
    assert spruce.density_of(small_net) == pytest.approx(0.4, abs=0.01)
    for layer in spruce.masked_layers(small_net).values():
        assert (layer.weight[~layer.parametrizations.weight[0].mask] == 0).all()


def test_repruning_only_removes_more(small_net):
    spruce.prune(small_net, "element", 0.6)
    first = {n: get_mask(m).clone() for n, m in spruce.masked_layers(small_net).items()}
    spruce.prune(small_net, "group", 0.5)
    second = {n: get_mask(m) for n, m in spruce.masked_layers(small_net).items()}
    for n in first:
        assert not (second[n] & ~first[n]).any()
        assert second[n].sum() < first[n].sum()
    info = spruce.masked_layers(small_net)["fc1"].parametrizations.weight[0].info
    assert [p["name"] for p in info["patterns"]] == ["element", "group"]
    # a second prune at a higher density cannot revive anything
    spruce.prune(small_net, "element", 0.9)
    third = {n: get_mask(m) for n, m in spruce.masked_layers(small_net).items()}
    assert all(torch.equal(third[n], second[n]) for n in first)


def test_determinism_with_seed(small_net):
    a, b = copy.deepcopy(small_net), copy.deepcopy(small_net)
    spruce.prune(a, "element", 0.5, criterion="random")
    spruce.prune(b, "element", 0.5, criterion="random")
    for n, m in spruce.masked_layers(a).items():
        assert torch.equal(get_mask(m), get_mask(spruce.masked_layers(b)[n]))


@pytest.mark.parametrize("scope", ["global", "lamp"])
def test_global_scopes_hit_overall_density(scope, small_net):
    report = spruce.prune(small_net, "element", 0.3, scope=scope)
    assert report.overall_density == pytest.approx(0.3, abs=1e-3)
    assert len({round(r.density, 3) for r in report.rows}) > 1  # not uniform
    assert all(r.kept >= 1 for r in report.rows)


def test_global_magnitude_is_one_threshold(small_net):
    report = spruce.prune(small_net, "element", 0.5, scope="global")
    kept_min = min(float(m.weight.detach()[get_mask(m).reshape(m.weight.shape)].abs().min())
                   for m in spruce.masked_layers(small_net).values())
    dropped_max = max(float(original_weight(m).detach()[~get_mask(m).reshape(m.weight.shape)]
                            .abs().max())
                      for m in spruce.masked_layers(small_net).values())
    assert kept_min >= dropped_max
    assert report.scope == "global"


def test_overrides_and_exclude(small_net):
    report = spruce.prune(small_net, "element", 0.5, exclude=["fc2"], overrides={"conv*": 0.25})
    rows = {r.name: r for r in report.rows}
    assert "fc2" not in rows and rows["conv1"].target == 0.25
    assert rows["conv2"].kept == kept_count(0.25, rows["conv2"].total)
    assert rows["fc1"].kept == kept_count(0.5, rows["fc1"].total)


def test_nm_under_global_scope_keeps_n_over_m(small_net):
    report = spruce.prune(small_net, "2:4", scope="global")
    assert all(r.target == 0.5 for r in report.rows)


def test_bake_writes_zeros_and_removes_parametrizations(small_net, small_input):
    spruce.prune(small_net, "channel", 0.5)
    out = small_net(small_input)
    spruce.bake(small_net)
    assert spruce.masked_layers(small_net) == {}
    assert isinstance(small_net.fc1.weight, nn.Parameter)
    assert torch.equal(small_net(small_input), out)
    assert int((small_net.fc1.weight.abs().sum(1) == 0).sum()) == 16


def test_taylor_through_prune(small_net, small_input):
    batches = [(small_input, torch.randint(0, 10, (4,)))]
    report = spruce.prune(small_net, "group", 0.5, criterion="taylor", calibration=batches)
    assert report.criterion["name"] == "taylor"


@pytest.mark.parametrize("kwargs,match", [
    ({"pattern": "element", "density": 0.0}, r"\(0, 1\]"),
    ({"pattern": "element", "density": 1.2}, r"\(0, 1\]"),
    ({"pattern": "element", "density": float("nan")}, r"\(0, 1\]"),
    ({"pattern": "element"}, "needs a density"),
    ({"pattern": "hexagon", "density": 0.5}, "valid: block"),
    ({"pattern": "element", "density": 0.5, "criterion": "snip"}, "unknown criterion 'snip'"),
    ({"pattern": "6:4"}, "N <= M"),
    ({"pattern": "2:4", "density": 0.25}, "keeps exactly 0.5"),
    ({"pattern": "block", "density": 0.5, "block": (64, 4)}, "layer 'conv1': block 64x4"),
    ({"pattern": "element", "density": 0.5, "scope": "local"}, "valid: uniform"),
    ({"pattern": "element", "density": 0.5, "criterion": "taylor"}, "calibration data"),
    ({"pattern": "element", "density": 0.5, "overrides": {"fc*": 2.0}}, "override 'fc\\*'"),
])
def test_bad_input_leaves_model_untouched(kwargs, match, small_net):
    state = copy.deepcopy(small_net.state_dict())
    with pytest.raises(ValueError, match=match):
        spruce.prune(small_net, **kwargs)
    assert spruce.masked_layers(small_net) == {}
    assert all(torch.equal(v, state[k]) for k, v in small_net.state_dict().items())


def test_nan_weight_names_the_layer(small_net):
    with torch.no_grad():
        small_net.fc1.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer 'fc1': weight has 1 NaN/inf"):
        spruce.prune(small_net, "element", 0.5)
    assert spruce.masked_layers(small_net) == {}


def test_no_prunable_layers_lists_types():
    model = nn.Sequential(nn.ReLU(), nn.LayerNorm(4))
    with pytest.raises(ValueError, match="module types found: ReLU, LayerNorm"):
        spruce.prune(model, "element", 0.5)


def test_group_channel_unit_prunes_whole_conv_input_channels():
    net = spruce.zoo.build("resnet18", "cifar10", seed=0)
    report = spruce.prune(net, "group", 0.5, exclude=["fc"], unit="channel")
    assert {r.pattern for r in report.rows} == {"group (channel)"}
    for name, layer in masked_layers(net).items():
        mask = get_mask(layer)
        c = layer.in_channels
        per_channel = mask[0].reshape(c, -1)
        assert torch.equal(mask, mask[0].expand_as(mask)), name
        assert torch.equal(per_channel, per_channel[:, :1].expand_as(per_channel)), name
        assert int(per_channel[:, 0].sum()) == kept_count(0.5, c), name
