"""Wanda and SparseGPT: scores, reconstruction quality, exact pattern structure, and the
sequential calibration order."""

import copy

import pytest
import torch
from torch import nn

import spruce
from spruce.criteria import SparseGPT, Wanda
from spruce.masks import get_mask, mask_info, original_weight
from spruce.patterns import get_pattern, kept_count

CASES = [("element", 0.5, {}), ("2:4", None, {}), ("block", 0.5, {"block": (4, 4)}),
         ("group", 0.5, {}), ("channel", 0.5, {})]


def correlated_inputs(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """Rows with correlated features of very different scales (as activations have)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k ** 0.5 + torch.eye(k)
    scale = torch.logspace(-1, 1, k)[torch.randperm(k, generator=g)]
    return (torch.randn(n, k, generator=g) @ mix) * scale


def test_wanda_is_weight_times_input_norm():
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [-4.0, 0.5, 0.25]]))
    x = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0], [2.0, 4.0, 0.0]])  # ‖X_j‖ = √5, 5, 2
    model = nn.Sequential(layer)
    scores = Wanda(calibration=[x[:2], x[2:]]).scores(model, {"0": layer})["0"]
    expected = layer.weight.detach().abs() * torch.tensor([5 ** 0.5, 5.0, 2.0])
    torch.testing.assert_close(scores, expected)
    # per output row: row 0 keeps |-2|·5 = 10 and 3·2 = 6 (magnitude would keep 3 and -2
    # too); row 1 keeps |-4|·√5 ≈ 8.9 and 0.5·5 = 2.5, where magnitude keeps -4 and 0.5 —
    # with 2 of 3 per row the row comparison is what decides
    spruce.prune(model, "element", 4 / 6, criterion="wanda", calibration=[x])
    assert get_mask(layer).tolist() == [[False, True, True], [True, True, False]]


def layer_error(pattern, density, kw, criterion, w, x):
    layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    model = nn.Sequential(layer)
    extra = {} if criterion == "magnitude" else {"calibration": [x[:256], x[256:]]}
    spruce.prune(model, pattern, density, criterion=criterion, **kw, **extra)
    return float(torch.linalg.norm(x @ w.T - model(x).detach()))


@pytest.mark.parametrize("pattern,density,kw", CASES)
def test_sparsegpt_beats_wanda_beats_magnitude(pattern, density, kw):
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    x = correlated_inputs(512, 64)
    errs = {c: layer_error(pattern, density, kw, c, w, x)
            for c in ("sparsegpt", "wanda", "magnitude")}
    assert errs["sparsegpt"] < errs["wanda"] < errs["magnitude"], errs


def expected_kept(pattern, density, view):
    pat = get_pattern(pattern, **({"block": (4, 4)} if pattern == "block" else {}))
    if pattern == "2:4":
        return view[0] * view[1] // 2
    _, n_groups = pat.group_ids(view)
    size = view[0] * view[1] // n_groups
    return kept_count(density, n_groups) * size


@pytest.mark.parametrize("pattern,density,kw", CASES)
@pytest.mark.parametrize("criterion", ["sparsegpt", "wanda"])
def test_exact_pattern_structure(pattern, density, kw, criterion):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 40), nn.GELU(), nn.Linear(40, 20), nn.GELU(),
                          nn.Linear(20, 8))
    dense = {n: original_weight(m).detach().clone() for n, m in model.named_children()
             if isinstance(m, nn.Linear)}
    x = correlated_inputs(200, 24, seed=3)
    report = spruce.prune(model, pattern, density, criterion=criterion, calibration=[x], **kw)
    pat = get_pattern(pattern, **kw)
    for row in report.rows:
        layer = model.get_submodule(row.name)
        mask = get_mask(layer)
        assert pat.conforms(mask) is None
        assert row.kept == int(mask.sum()) == expected_kept(pattern, density, row.view)
        w = original_weight(layer).detach()
        assert bool((w[~mask] == 0).all()) or criterion == "wanda"
        if criterion == "wanda":
            assert torch.equal(w, dense[row.name])  # Wanda never changes weights
    changed = criterion == "sparsegpt" and pattern != "channel"
    assert bool(report.changed) == changed
    assert all(mask_info(model.get_submodule(n)).get("weights_changed") for n in report.changed)


def test_sparsegpt_element_2_4_scores_match_the_sweep_on_a_diagonal_hessian():
    """With uncorrelated unit-variance inputs H ∝ I: SparseGPT keeps what magnitude keeps
    and changes nothing it keeps (nothing to compensate with)."""
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(2))
    layer = nn.Linear(16, 8, bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    x = torch.eye(16) * 3.0
    spruce.prune(nn.Sequential(layer), "2:4", criterion=SparseGPT(damp=0.0), calibration=[x])
    ref = nn.Linear(16, 8, bias=False)
    with torch.no_grad():
        ref.weight.copy_(w)
    spruce.prune(ref, "2:4")
    assert torch.equal(get_mask(layer), get_mask(ref))
    torch.testing.assert_close(layer.weight.detach(), ref.weight.detach())


class Recorder:
    """Forward pre-hook keeping every input a layer sees."""

    def __init__(self, layer: nn.Module):
        self.inputs: list[torch.Tensor] = []
        layer.register_forward_pre_hook(lambda m, args: self.inputs.append(args[0].clone()))


@pytest.mark.parametrize("criterion", ["sparsegpt", "wanda"])
def test_each_layer_sees_the_layers_pruned_before_it(criterion):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 8))
    x = correlated_inputs(64, 16)
    dense = copy.deepcopy(model)
    seen = {i: Recorder(model[i]) for i in (0, 2, 4)}
    spruce.prune(model, "element", 0.5, criterion=criterion, calibration=[x])
    with torch.no_grad():
        h1 = model[1](model[0](x))  # through the final pruned layers
        h2 = model[3](model[2](h1))
        d1 = dense[1](dense[0](x))
    # the last time layer 2 and layer 4 ran during pruning was their own calibration pass,
    # after every layer before them had been pruned
    torch.testing.assert_close(seen[2].inputs[-1], h1)
    torch.testing.assert_close(seen[4].inputs[-1], h2)
    assert not torch.allclose(seen[2].inputs[-1], d1)
    assert torch.equal(seen[0].inputs[-1], x)
    # layer 0 never saw anything but the raw input; layer 2 saw the dense input in the
    # one discovery forward only
    assert torch.allclose(seen[2].inputs[0], d1)


def test_qkv_share_one_stage_and_one_hessian():
    from spruce.calibrate import stages_of

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(8, 8) for _ in range(4))

        def forward(self, x):
            a = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2), -1) @ self.v(x)
            return self.o(a)

    model = Attn()
    layers = {n: getattr(model, n) for n in "qkvo"}
    stages, calls = stages_of(model, layers, torch.randn(2, 5, 8), torch.device("cpu"))
    assert stages == [["q", "k", "v"], ["o"]]
    assert calls == dict.fromkeys("qkvo", 1)


def test_rowwise_least_squares_is_the_least_squares_solution():
    from spruce.criteria.oneshot.hessian import rowwise_least_squares
    g = torch.Generator().manual_seed(4)
    w, x = torch.randn(6, 12, generator=g), correlated_inputs(100, 12, seed=5)
    mask = torch.rand(6, 12, generator=g) < 0.5
    mask[0] = True
    out = rowwise_least_squares(w, (x.T @ x).double(), mask, budget=200)  # several chunks
    for r in range(6):
        s = mask[r].nonzero().squeeze(1)
        best = torch.linalg.lstsq(x[:, s].double(), (x @ w[r]).double()).solution
        torch.testing.assert_close(out[r, s].double(), best, rtol=1e-4, atol=1e-4)
        assert bool((out[r, ~mask[r]] == 0).all())


def test_dense_targets_fit_the_dense_outputs():
    from spruce.calibrate import InputStats
    from spruce.criteria.oneshot.hessian import dense_target
    x = correlated_inputs(300, 12, seed=6)
    w = torch.randn(5, 12, generator=torch.Generator().manual_seed(7))
    same = InputStats(x.square().sum(0), x.T @ x, 300, cross=x.T @ x)
    torch.testing.assert_close(dense_target(w, same, 0.01, "l"), w, rtol=1e-4, atol=1e-4)
    xp = x + 0.3 * correlated_inputs(300, 12, seed=8)  # what a pruned model feeds the layer
    shifted = InputStats(xp.square().sum(0), xp.T @ xp, 300, cross=x.T @ xp)
    best = torch.linalg.lstsq(xp.double(), (x @ w.T).double()).solution.T
    torch.testing.assert_close(dense_target(w, shifted, 0.0, "l").double(), best,
                               rtol=1e-3, atol=1e-3)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 48), nn.GELU(), nn.Linear(48, 48), nn.GELU(),
                          nn.Linear(48, 6))
    ref = model(x).detach()
    errs = {}
    for targets in ("pruned", "dense"):
        m = copy.deepcopy(model)
        spruce.prune(m, "group", 0.5, criterion=SparseGPT(targets=targets), calibration=[x])
        errs[targets] = float((m(x) - ref).norm())
    assert errs["dense"] < errs["pruned"], errs
    with pytest.raises(spruce.errors.SpruceError, match="targets must be one of"):
        SparseGPT(targets="teacher")
