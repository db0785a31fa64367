"""Channel permutations for N:M sparsity (Pool & Yu 2021), the baseline learned masks beat.

Permuting the input channels of a layer changes which weights share a run of M in the 2-D
view, so a magnitude N:M mask can keep more of the weight. The *efficacy* of a permutation
is the total |w| a magnitude N:M mask keeps after it. :func:`search_permutation` maximises
it by channel swaps: each iteration draws candidate swaps of two channels, scores every
candidate's exact efficacy gain at once, and applies the best improving ones that touch
disjoint runs, until ``patience`` iterations bring no gain or ``max_iters`` is reached (the
bounded swap search of Pool & Yu §4 and NVIDIA Apex ASP, without their escape-by-random-
swaps phase).

A channel is a *unit* of consecutive columns of the view: one column of a Linear, the
``kh·kw`` columns of one input channel of a Conv2d (the view is ``[O, C·kh·kw]`` in im2col
order, DESIGN.md §1). Only whole units move — a permutation of the C input channels is what
a model can realise; a column permutation that splits a channel's taps is not. With
``unit = 9`` and ``M = 4`` a unit straddles runs, so neighbouring channels share a run; the
gain of a swap is computed over the union of the runs both channels touch, once each.

The model function is kept in one of two ways:
- :func:`permute_producer_consumer` — the input channels of a layer come from a private
  producer (BERT's FFN ``intermediate.dense → GELU → output.dense``; a ResNet BasicBlock's
  ``conv1 → bn1 → ReLU → conv2``): permute the producer's output channels (and bias, and
  the per-channel BatchNorm between) and the consumer's input channels; element-wise and
  per-channel ops between commute with the permutation, so the outputs are unchanged and
  inference costs nothing extra.
- :class:`InputPermuted` — any Linear or Conv2d: permute its input channels and gather its
  input (``x[..., perm]`` / ``x[:, perm]``) on the fly (same function, one gather per call).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

from ..masks import original_weight, set_submodule
from ..view import prunable_layers, to_view


def efficacy(view: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Σ|w| that magnitude N:M keeps in a view [R, K] (K divisible by M); a weight of higher
    rank is read through its 2-D view."""
    a = to_view(view).detach().abs().float()
    runs = a.reshape(a.shape[0], -1, m)
    return runs.sort(-1).values[..., m - n:].sum()


def _kept(blocks: torch.Tensor, n: int) -> torch.Tensor:
    """blocks [..., R, M] → Σ over R of the top-n entries of each row."""
    return blocks.sort(-1).values[..., -n:].sum((-1, -2))


def unit_columns(perm: torch.Tensor, unit: int) -> torch.Tensor:
    """A permutation of C units → the permutation of the C·unit columns it moves:
    ``view[:, unit_columns(perm, unit)]`` is ``weight[:, perm]`` seen through the view."""
    return (perm[:, None] * unit + torch.arange(unit, device=perm.device)).reshape(-1)


@dataclass
class SearchResult:
    perm: torch.Tensor  # [C] new channel order (on the CPU): channel p takes old channel perm[p]
    unit: int  # columns of the view per channel (1: Linear; kh·kw: Conv2d)
    iters: int  # iterations run (≤ max_iters: ``patience`` idle ones stop the search)
    swaps: int  # channel swaps applied
    before: float  # N:M efficacy of the view as given
    after: float  # N:M efficacy of the permuted view (never below ``before``)

    def columns(self) -> torch.Tensor:
        """The permutation of the view's columns, ``unit_columns(perm, unit)``."""
        return unit_columns(self.perm, self.unit)


def _unit_runs(c: int, unit: int, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of C units: its first and last run, and the runs it touches [C, T] (padded
    with its first run; ``valid`` [C, T] says which entries are real)."""
    first = torch.arange(c) * unit // m
    last = ((torch.arange(c) + 1) * unit - 1) // m
    t = int((last - first).max()) + 1
    runs = first[:, None] + torch.arange(t)
    valid = runs <= last[:, None]
    return first, last, torch.stack([torch.where(valid, runs, first[:, None]), valid.long()])


def _swap_gains(cols: torch.Tensor, a: torch.Tensor, b: torch.Tensor, table: torch.Tensor,
                unit: int, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact N:M efficacy gain of swapping unit ``a[p]`` with unit ``b[p]`` for every
    candidate p, over the runs either unit touches (a run both touch counts once).
    Returns (gain, old kept over those runs), both [P]."""
    ra, va = table[0][a], table[1][a].bool()                      # (P, T)
    rb, vb = table[0][b], table[1][b].bool()
    shared = ((rb[:, :, None] == ra[:, None, :]) & va[:, None, :]).any(-1)
    runs = torch.cat([ra, rb], 1)                                 # (P, 2T)
    weight = torch.cat([va, vb & ~shared], 1).float()
    pos = runs[..., None] * m + torch.arange(m, device=cols.device)  # (P, 2T, M) view columns
    at = pos // unit                                              # the unit each column is in
    a3, b3 = a[:, None, None], b[:, None, None]
    src = torch.where(at == a3, b3, torch.where(at == b3, a3, at)) * unit + pos % unit
    old = (_kept(cols[pos].transpose(-1, -2), n) * weight).sum(-1)  # cols[pos]: (P, 2T, M, R)
    new = (_kept(cols[src].transpose(-1, -2), n) * weight).sum(-1)
    return new - old, old


@torch.no_grad()
def search_units(view: torch.Tensor, n: int = 2, m: int = 4, candidates: int = 2048,
                 max_iters: int = 400, patience: int = 20, seed: int = 0,
                 unit: int | None = None) -> SearchResult:
    """Search a permutation of the C = K/unit channels of ``view`` [R, K] (or a conv weight
    [O, C, kh, kw], read as its view) that raises its N:M efficacy; see the module doc.

    ``unit``: columns per channel (default: 1 for a 2-D view, kh·kw for a conv weight). The
    search runs on the tensor's device; the candidate draws come from a seeded CPU generator
    (the same swaps on every device) and cross to the device once per iteration, and the
    chosen swaps come back once.
    """
    unit = math.prod(view.shape[2:]) if unit is None else int(unit)
    view = to_view(view)
    r, k = view.shape
    if unit < 1 or k % unit:
        raise ValueError(f"channel permutation: unit={unit} columns per channel does not "
                         f"divide K={k}")
    if k % m:
        raise ValueError(f"channel permutation for {n}:{m} needs K divisible by {m}; K={k} "
                         "(exclude the layer)")
    c = k // unit
    cols = view.detach().abs().float().T.contiguous()            # (K, R): column q at row q
    before = float(efficacy(view, n, m))
    result = SearchResult(torch.arange(c), unit, 0, 0, before, before)
    if c < 2 or k // m < 2:
        return result
    dev = cols.device  # the search runs where the weight is; the draws on the CPU (seeded)
    first, last, table = _unit_runs(c, unit, m)
    lone = first == last  # units inside one run: swapping two in the same run gains nothing
    spans = list(zip(first.tolist(), last.tolist(), strict=True))
    table = table.to(dev)
    gen = torch.Generator().manual_seed(seed)
    idle = 0
    for _ in range(max_iters):
        result.iters += 1
        a = torch.randint(0, c, (candidates,), generator=gen)
        b = torch.randint(0, c, (candidates,), generator=gen)
        keep = (a != b) & ~(lone[a] & lone[b] & (first[a] == first[b]))
        ab = torch.stack([a, b])[:, keep].to(dev)                 # one transfer there
        gain, old = _swap_gains(cols, ab[0], ab[1], table, unit, n, m)
        order = torch.argsort(gain, descending=True)
        good = (gain[order] > 1e-6 * old[order]).long()
        ranked = torch.cat([good[None], ab[:, order]]).T.tolist()  # and one back
        swaps = _disjoint(ranked, spans)
        if swaps:
            _apply(cols, result.perm, swaps, unit)
            result.swaps += len(swaps)
        idle = 0 if swaps else idle + 1
        if idle >= patience:
            break
    result.after = float(efficacy(cols.T, n, m))
    return result


def _disjoint(ranked: list[list[int]], spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """From ``[improves, a, b]`` rows, best gain first: the improving swaps whose runs touch
    no run an earlier chosen one touches (so their gains add up exactly)."""
    used: set[int] = set()
    swaps: list[tuple[int, int]] = []
    for ok, x, y in ranked:
        if not ok:
            break
        touched = {*range(spans[x][0], spans[x][1] + 1), *range(spans[y][0], spans[y][1] + 1)}
        if used & touched:
            continue
        used |= touched
        swaps.append((x, y))
    return swaps


def _apply(cols: torch.Tensor, perm: torch.Tensor, swaps: list[tuple[int, int]],
           unit: int) -> None:
    xs = torch.tensor([s[0] for s in swaps])
    ys = torch.tensor([s[1] for s in swaps])
    src, dst = torch.cat([ys, xs]), torch.cat([xs, ys])
    where = torch.stack([unit_columns(dst, unit), unit_columns(src, unit)]).to(cols.device)
    cols[where[0]] = cols[where[1]]
    perm[dst] = perm[src].clone()


def search_permutation(view: torch.Tensor, n: int = 2, m: int = 4, candidates: int = 2048,
                       max_iters: int = 400, patience: int = 20, seed: int = 0,
                       unit: int | None = None) -> torch.Tensor:
    """A channel permutation ``perm`` [K/unit] of ``view`` [R, K] with high N:M efficacy
    (never lower than the identity's): with ``unit = 1`` ``view[:, perm]`` is the permuted
    view; with ``unit > 1`` the view's columns move in whole units,
    ``view[:, unit_columns(perm, unit)]`` (for a conv weight: ``weight[:, perm]``).
    :func:`search_units` also reports the iterations, swaps and efficacies."""
    return search_units(view, n, m, candidates, max_iters, patience, seed, unit).perm


def channel_unit(layer: nn.Module) -> int:
    """Columns of the 2-D view per input channel: 1 for a Linear, kh·kw for a Conv2d."""
    return math.prod(original_weight(layer).shape[2:])


def layer_search(layer: nn.Module, n: int = 2, m: int = 4, **search) -> SearchResult:
    """:func:`search_units` over the layer's input channels (its unmasked weight)."""
    return search_units(original_weight(layer), n, m, unit=channel_unit(layer), **search)


def _check_unmasked(layer: nn.Module, what: str) -> None:
    if parametrize.is_parametrized(layer, "weight"):
        raise ValueError(f"{what} carries a mask; permute channels before pruning (the mask "
                         "would no longer line up with the weight)")


def _in_dim(layer: nn.Module, what: str) -> int:
    """Input channels of a Linear or ungrouped Conv2d."""
    if isinstance(layer, nn.Conv2d) and layer.groups == 1:
        return layer.in_channels
    if isinstance(layer, nn.Linear):
        return layer.in_features
    raise TypeError(f"{what} is a {type(layer).__name__}; channel permutation handles Linear "
                    "and ungrouped Conv2d")


@torch.no_grad()
def permute_producer_consumer(producer: nn.Module, consumer: nn.Module, perm: torch.Tensor,
                              norm: nn.Module | None = None) -> None:
    """In place: the producer's output channels, the per-channel ``norm`` between (a
    BatchNorm: weight, bias, running mean and variance) and the consumer's input channels,
    all reordered by ``perm``; ``consumer(f(norm(producer(x))))`` is unchanged for an
    element-wise ``f``. Linear or Conv2d on either side. Call before masks are attached."""
    pw, cw = original_weight(producer), original_weight(consumer)
    c = _in_dim(consumer, "consumer")
    _in_dim(producer, "producer")
    if pw.shape[0] != c or perm.numel() != c:
        raise ValueError(f"producer has {pw.shape[0]} output channels, consumer {c} input "
                         f"channels, permutation {perm.numel()}: they must agree")
    if norm is not None and not (isinstance(norm, _BatchNorm) and norm.num_features == c):
        raise ValueError(f"norm between producer and consumer must be a BatchNorm over {c} "
                         f"channels; got {norm}")
    _check_unmasked(producer, "producer")
    _check_unmasked(consumer, "consumer")
    perm = perm.long().to(pw.device)
    pw.copy_(pw.index_select(0, perm))
    cw.copy_(cw.index_select(1, perm))
    tensors = [producer.bias] + ([] if norm is None else
                                 [norm.weight, norm.bias, norm.running_mean, norm.running_var])
    for t in tensors:
        if t is not None:
            t.copy_(t.index_select(0, perm))


class InputPermuted(nn.Module):
    """``layer`` (Linear or Conv2d) with its input channels permuted by ``perm`` and its
    input gathered to match — the same function as the original layer:
    Linear ``forward(x) = linear(x[..., perm])``, Conv2d ``forward(x) = conv(x[:, perm])``
    (the weight's columns move in whole ``kh·kw`` units). Wrap before masks are attached;
    masks then go on ``.layer``."""

    def __init__(self, layer: nn.Module, perm: torch.Tensor):
        super().__init__()
        c = _in_dim(layer, "the wrapped layer")
        if sorted(perm.tolist()) != list(range(c)):
            raise ValueError(f"perm must be a permutation of the layer's {c} input channels; "
                             f"got {perm.numel()} entries")
        _check_unmasked(layer, "the wrapped layer")
        w = original_weight(layer)
        perm = perm.long().to(w.device)
        with torch.no_grad():
            w.copy_(w.index_select(1, perm))
        self.layer = layer
        self.dim = 1 if isinstance(layer, nn.Conv2d) else -1  # the input's channel dim
        self.register_buffer("perm", perm.clone())

    @property
    def linear(self) -> nn.Module:
        """The wrapped layer (the name the Linear-only version used)."""
        return self.layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.index_select(self.dim, self.perm))


def permute_chain(producer: nn.Module, consumer: nn.Module, norm: nn.Module | None = None,
                  n: int = 2, m: int = 4, **search) -> SearchResult:
    """Search the consumer's input-channel permutation and apply it through the chain with
    :func:`permute_producer_consumer` (function-preserving, no run-time cost)."""
    found = layer_search(consumer, n, m, **search)
    permute_producer_consumer(producer, consumer, found.perm, norm)
    return found


def permute_inputs(model: nn.Module, exclude: tuple[str, ...] = (), n: int = 2, m: int = 4,
                   **search) -> dict[str, SearchResult]:
    """In place: every prunable layer of ``model`` (``exclude`` globs aside) searched and
    replaced by an :class:`InputPermuted` wrapper (same function, one gather per call).
    The layers then live at ``NAME.layer``; prune after this."""
    out = {}
    for name, layer in prunable_layers(model, exclude)[0].items():
        out[name] = layer_search(layer, n, m, **search)
        set_submodule(model, name, InputPermuted(layer, out[name].perm))
    return out
