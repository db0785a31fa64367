"""Exact kept counts and the structure of every pattern, on random shapes."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spruce.patterns import get_pattern, kept_count, names

shapes = st.tuples(st.integers(1, 40), st.integers(1, 70))
densities = st.floats(0.01, 1.0)
SETTINGS = settings(max_examples=40, deadline=None)


def scores_for(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g)


def test_registry_names():
    assert names() == ["block", "channel", "element", "group", "structured", "vector"]


@SETTINGS
@given(shapes, densities)
def test_element_exact(shape, d):
    mask = get_pattern("element").compute_mask(scores_for(shape), d)
    assert int(mask.sum()) == kept_count(d, shape[0] * shape[1])


@SETTINGS
@given(shapes, densities)
def test_group_whole_columns(shape, d):
    mask = get_pattern("group").compute_mask(scores_for(shape), d)
    col = mask[0]
    assert torch.equal(mask, col.expand_as(mask)), "columns must be all-or-nothing"
    assert int(col.sum()) == kept_count(d, shape[1])


@SETTINGS
@given(shapes, densities)
def test_channel_whole_rows(shape, d):
    mask = get_pattern("channel").compute_mask(scores_for(shape), d)
    row = mask[:, :1]
    assert torch.equal(mask, row.expand_as(mask))
    assert int(row.sum()) == kept_count(d, shape[0])


@SETTINGS
@given(shapes, densities, st.integers(1, 8), st.integers(1, 8))
def test_block_uniform_tiles(shape, d, bo, bk):
    bo, bk = min(bo, shape[0]), min(bk, shape[1])
    pat = get_pattern("block", block=(bo, bk))
    mask = pat.compute_mask(scores_for(shape), d)
    n_tiles = math.ceil(shape[0] / bo) * math.ceil(shape[1] / bk)
    kept_tiles = 0
    for i in range(0, shape[0], bo):
        for j in range(0, shape[1], bk):
            tile = mask[i:i + bo, j:j + bk]
            assert bool(tile.all()) or not bool(tile.any()), "tiles are kept or dropped whole"
            kept_tiles += bool(tile.all())
    assert kept_tiles == kept_count(d, n_tiles)
    assert pat.conforms(mask) is None


@SETTINGS
@given(shapes, st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 8), (4, 4)]))
def test_nm_exact_per_run(shape, nm):
    n, m = nm
    mask = get_pattern(f"{n}:{m}").compute_mask(scores_for(shape))
    r, k = shape
    full = (k // m) * m
    if full:
        assert (mask[:, :full].reshape(r, -1, m).sum(-1) == n).all()
    if full < k:  # documented: the partial last run keeps ceil(N·L/M)
        assert (mask[:, full:].sum(-1) == math.ceil(n * (k - full) / m)).all()


def test_nm_names_resolve_alike():
    assert get_pattern("2:4") == get_pattern("vector") == get_pattern("n:m", n=2, m=4)
    assert get_pattern({"name": "vector", "n": 1, "m": 4}).fixed_density() == 0.25


def test_ties_are_deterministic_lower_index_first():
    s = torch.ones(4, 8)
    mask = get_pattern("group").compute_mask(s, 0.5)
    assert mask[0].tolist() == [True] * 4 + [False] * 4
    mask = get_pattern("2:4").compute_mask(s)
    assert mask[0].tolist() == [True, True, False, False] * 2


@pytest.mark.parametrize("name,kw,d", [("element", {}, 0.3), ("group", {}, 0.3),
                                       ("channel", {}, 0.3), ("block", {"block": (2, 3)}, 0.3),
                                       ("vector", {"n": 2, "m": 4}, None)])
def test_never_revives(name, kw, d):
    pat = get_pattern(name, **kw)
    existing = torch.rand(12, 20) > 0.5
    mask = pat.compute_mask(torch.rand(12, 20), d, existing)
    assert not (mask & ~existing).any()


def test_existing_pruned_groups_chosen_last():
    s = torch.rand(6, 10)
    existing = torch.ones(6, 10, dtype=torch.bool)
    existing[:, 0] = False  # column 0 already pruned, even if it scores highest
    s[:, 0] = 100.0
    mask = get_pattern("group").compute_mask(s, 0.5, existing)
    assert int(mask[0].sum()) == 5 and not mask[:, 0].any()


def test_group_score_reductions():
    s = torch.tensor([[3.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    # column sums: 3, 2, 2; sum of squares: 9, 2, 2; max: 3, 1, 1
    for reduce in ("sum", "sumsq", "mean", "max"):
        mask = get_pattern("group", reduce=reduce).compute_mask(s, 1 / 3)
        assert mask[0].tolist() == [True, False, False]
    s2 = torch.tensor([[2.0, 1.5], [0.0, 1.5]])  # sum 2 vs 3, max 2 vs 1.5
    assert get_pattern("group", reduce="sum").compute_mask(s2, 0.5)[0].tolist() == [False, True]
    assert get_pattern("group", reduce="max").compute_mask(s2, 0.5)[0].tolist() == [True, False]


@pytest.mark.parametrize("bad,match", [
    (lambda: get_pattern("diagonal"), "valid: block, channel, element, group, structured, vector"),
    (lambda: get_pattern("5:4"), "N <= M"),
    (lambda: get_pattern("vector", n=2, m=0), "N <= M"),
    (lambda: get_pattern("x:4"), "cannot read N:M"),
    (lambda: get_pattern("group", reduce="median"), "valid: sumsq"),
    (lambda: get_pattern("2:4").compute_mask(torch.rand(4, 8), 0.3), "keeps exactly 0.5"),
    (lambda: get_pattern("element").compute_mask(torch.rand(4, 8), 0.0), r"\(0, 1\]"),
    (lambda: get_pattern("element").compute_mask(torch.rand(4, 8), 1.5), r"\(0, 1\]"),
    (lambda: get_pattern("block", block=(8, 2)).compute_mask(torch.rand(4, 8), 0.5),
     "larger than the weight"),
])
def test_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


def test_conforms_detects_broken_structure():
    mask = get_pattern("group").compute_mask(torch.rand(4, 6), 0.5)
    assert get_pattern("group").conforms(mask) is None
    mask[0, mask[0].nonzero()[0]] = False
    assert "partly kept" in get_pattern("group").conforms(mask)
    nm = get_pattern("2:4")
    assert "at most 2" in nm.conforms(torch.ones(2, 8, dtype=torch.bool))


@SETTINGS
@given(st.integers(1, 12), st.integers(1, 9), st.integers(1, 9), densities)
def test_group_channel_unit_keeps_whole_channels(r, c, t, d):
    pat = get_pattern("group", unit="channel").for_view(t)
    mask = pat.compute_mask(scores_for((r, c * t)), d)
    assert torch.equal(mask, mask[0].expand_as(mask)), "columns must be all-or-nothing"
    per_channel = mask[0].reshape(c, t)
    assert torch.equal(per_channel, per_channel[:, :1].expand_as(per_channel))
    assert int(per_channel[:, 0].sum()) == kept_count(d, c)


def test_group_unit_spec_round_trip_and_errors():
    assert get_pattern("group").spec() == {"name": "group", "reduce": "sumsq"}
    pat = get_pattern("group", unit="channel")
    assert pat.spec() == {"name": "group", "reduce": "sumsq", "unit": "channel"}
    assert get_pattern(pat.spec()) == pat and get_pattern("group").for_view(9).taps == 1
    with pytest.raises(ValueError, match="group unit must be one of column, channel"):
        get_pattern("group", unit="tap")
    with pytest.raises(ValueError, match="not a multiple of 9 taps"):
        pat.for_view(9).compute_mask(scores_for((4, 20)), 0.5)
