"""Channel permutation 2:4 (Pool & Yu): the search raises efficacy and keeps the function."""

from __future__ import annotations

import torch
from torch import nn

from spruce.learned import InputPermuted, efficacy, permute_producer_consumer, search_permutation


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
