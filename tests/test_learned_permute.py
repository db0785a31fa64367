"""Channel permutation 2:4 (Pool & Yu): the search raises efficacy and keeps the function."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import spruce
from spruce.learned import InputPermuted, efficacy, permute_producer_consumer, search_permutation
from spruce.learned.permute import (_swap_gains, _unit_runs, permute_chain, permute_inputs,
                                    search_units, unit_columns)
from spruce.masks import get_mask
from spruce.patterns import get_pattern
from spruce.view import prunable_layers
from spruce.zoo.resnet import BasicBlock


def test_search_never_lowers_efficacy_and_is_a_permutation():
    torch.manual_seed(0)
    w = torch.randn(16, 32) * torch.rand(1, 32) * 3  # column scales make order matter
    perm = search_permutation(w, max_iters=60, candidates=256)
    assert sorted(perm.tolist()) == list(range(32))
    assert efficacy(w[:, perm]) > efficacy(w)


def test_producer_consumer_permutation_keeps_the_dense_function():
    torch.manual_seed(0)
    ffn = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
    x = torch.randn(5, 8)
    before = ffn(x)
    perm = search_permutation(ffn[2].weight, max_iters=20, candidates=128)
    assert not torch.equal(perm, torch.arange(16))
    with torch.no_grad():
        permute_producer_consumer(ffn[0], ffn[2], perm)
    assert torch.allclose(ffn(x), before, atol=1e-6)


def test_input_permuted_linear_keeps_the_dense_function():
    torch.manual_seed(0)
    lin = nn.Linear(12, 5)
    x = torch.randn(3, 7, 12)
    before = lin(x)
    perm = torch.randperm(12)
    wrapped = InputPermuted(lin, perm)
    assert torch.allclose(wrapped(x), before, atol=1e-6)


# -- convolutions: channels are units of kh·kw consecutive columns of the view ------------

def _conv_weight(seed: int = 0, o: int = 16, c: int = 12, k: int = 3) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(o, c, k, k) * torch.rand(1, c, 1, 1) * 3  # channel scales matter


def test_swap_gains_are_exact_even_for_neighbouring_units_that_share_a_run():
    """Every pair of units, adjacent ones included (with unit 9 and M 4 they share a run):
    the batched gain equals the efficacy difference of the swapped view."""
    for unit, c in [(9, 8), (1, 12), (2, 6), (25, 4)]:
        torch.manual_seed(unit)
        view = torch.randn(5, c * unit)
        first, last, table = _unit_runs(c, unit, 4)
        a = torch.arange(c).repeat_interleave(c)
        b = torch.arange(c).repeat(c)
        gain, _ = _swap_gains(view.abs().T.contiguous(), a, b, table, unit, 2, 4)
        base = efficacy(view)
        for p in range(len(a)):
            perm = torch.arange(c)
            perm[[int(a[p]), int(b[p])]] = perm[[int(b[p]), int(a[p])]]
            exact = efficacy(view[:, unit_columns(perm, unit)]) - base
            assert abs(float(exact - gain[p])) < 1e-3


def test_unit_search_moves_whole_channels_and_never_lowers_efficacy():
    w = _conv_weight()
    found = search_units(w, max_iters=30, candidates=256)
    assert found.unit == 9 and found.swaps > 0
    assert sorted(found.perm.tolist()) == list(range(12))
    cols = found.columns()
    assert sorted(cols.tolist()) == list(range(12 * 9))
    units = cols.reshape(12, 9)  # every block of 9 columns is one whole input channel
    assert torch.equal(units, units[:, :1] + torch.arange(9))
    assert torch.equal(units[:, 0] % 9, torch.zeros(12, dtype=torch.long))
    view = w.reshape(16, -1)
    assert torch.equal(view[:, cols], w[:, found.perm].reshape(16, -1))
    assert found.after > found.before
    assert float(efficacy(w[:, found.perm])) == pytest.approx(found.after, rel=1e-5)
    assert torch.equal(search_permutation(w, max_iters=30, candidates=256), found.perm)


@pytest.mark.parametrize("seed", range(4))
def test_every_search_iteration_keeps_or_raises_efficacy(seed):
    w = _conv_weight(seed, o=8, c=12)
    last = float(efficacy(w))
    for iters in (1, 2, 4, 8):
        found = search_units(w, max_iters=iters, candidates=64, seed=seed, patience=100)
        now = float(efficacy(w[:, found.perm]))
        assert now >= last - 1e-4 * last
        last = now


def test_unit_must_divide_k_and_k_must_hold_whole_runs():
    with pytest.raises(ValueError, match="unit=5"):
        search_units(torch.randn(4, 36), unit=5)
    with pytest.raises(ValueError, match="K=27"):
        search_units(torch.randn(8, 3, 3, 3))


def _basic_block() -> BasicBlock:
    torch.manual_seed(0)
    block = BasicBlock(8, 8)
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        for bn in (block.bn1, block.bn2):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_()
            bn.bias.normal_()
    return block.eval()


def test_basic_block_producer_permutation_keeps_the_dense_function():
    block = _basic_block()
    x = torch.randn(2, 8, 6, 6)
    before = block(x)
    eff = float(efficacy(block.conv2.weight))
    found = permute_chain(block.conv1, block.conv2, block.bn1, max_iters=20, candidates=128)
    assert not torch.equal(found.perm, torch.arange(8))
    assert torch.allclose(block(x), before, atol=1e-5)
    assert float(efficacy(block.conv2.weight)) >= eff


def test_input_permuted_conv_keeps_the_dense_function():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 4, 3, padding=1)
    x = torch.randn(2, 8, 5, 5)
    before = conv(x)
    perm = torch.randperm(8)
    wrapped = InputPermuted(conv, perm)
    assert torch.allclose(wrapped(x), before, atol=1e-5)
    assert wrapped.linear is wrapped.layer is conv


def test_permuted_resnet_is_the_dense_function_and_prunes_to_2_4():
    from spruce import zoo

    model = zoo.build("resnet18", "cifar10", seed=0, num_classes=10).eval()
    x = torch.randn(2, 3, 16, 16)
    before = model(x)
    blocks = copy.deepcopy(model)
    for block in blocks.modules():
        if isinstance(block, BasicBlock):
            permute_chain(block.conv1, block.conv2, block.bn1, max_iters=2, candidates=64)
    gathered = copy.deepcopy(model)
    found = permute_inputs(gathered, exclude=("conv1",), max_iters=2, candidates=64)
    assert len(found) == 20 and "conv1" not in found
    assert all(r.after >= r.before for r in found.values())
    for permuted in (blocks, gathered):
        assert torch.allclose(permuted(x), before, atol=1e-4, rtol=1e-4)
        spruce.prune(permuted, "2:4", exclude=("conv1",))
        assert all(get_pattern("2:4").conforms(get_mask(layer)) is None
                   for layer in prunable_layers(permuted, ("conv1",))[0].values())


def test_permuting_a_masked_layer_is_refused():
    lin = nn.Linear(8, 4)
    spruce.prune(lin, "2:4")
    with pytest.raises(ValueError, match="before pruning"):
        InputPermuted(lin, torch.arange(8))
