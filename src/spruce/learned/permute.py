"""Channel permutations for N:M sparsity (Pool & Yu 2021), the baseline learned masks beat.

Permuting the K columns of a weight view changes which entries share a run of M, so a
magnitude N:M mask can keep more of the weight. The *efficacy* of a permutation is the
total |w| a magnitude N:M mask keeps after it. :func:`search_permutation` maximises it by
channel swaps: each iteration draws candidate swaps of two columns in different runs,
scores every candidate's efficacy gain at once, and applies the best non-overlapping
improving ones, until ``patience`` iterations bring no gain or ``max_iters`` is reached
(the bounded swap search of Pool & Yu §4 and NVIDIA Apex ASP, without their
escape-by-random-swaps phase).

The model function is kept in one of two ways:
- :func:`permute_producer_consumer` — the input channels of a Linear come from a private
  producer (BERT's FFN: ``intermediate.dense → GELU → output.dense``): permute the
  producer's rows and bias and the consumer's columns; element-wise ops between commute
  with the permutation, so the outputs are unchanged and inference costs nothing extra.
- :class:`InputPermuted` — any Linear: permute its columns and gather its input
  ``x[..., perm]`` on the fly (same function, one gather per call).
"""

from __future__ import annotations

import torch
from torch import nn

from ..masks import original_weight
from ..view import to_view


def efficacy(view: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Σ|w| that magnitude N:M keeps in a view [R, K] (K divisible by M)."""
    a = view.detach().abs().float()
    runs = a.reshape(a.shape[0], -1, m)
    return runs.sort(-1).values[..., m - n:].sum()


def _kept(blocks: torch.Tensor, n: int) -> torch.Tensor:
    """blocks [..., R, M] → Σ over R of the top-n entries of each row."""
    return blocks.sort(-1).values[..., -n:].sum((-1, -2))


@torch.no_grad()
def search_permutation(view: torch.Tensor, n: int = 2, m: int = 4, candidates: int = 2048,
                       max_iters: int = 400, patience: int = 20, seed: int = 0
                       ) -> torch.Tensor:
    """A column permutation ``perm`` [K] of ``view`` [R, K] with high N:M efficacy:
    ``view[:, perm]`` keeps more magnitude under N:M than ``view`` (never less)."""
    r, k = view.shape
    if k % m:
        raise ValueError(f"channel permutation for {n}:{m} needs K divisible by {m}; K={k}")
    g = k // m
    perm = torch.arange(k)
    if g < 2:
        return perm
    cols = view.detach().abs().float().T.contiguous()            # (K, R): column c at row c
    gen = torch.Generator().manual_seed(seed)
    idle = 0
    for _ in range(max_iters):
        i = torch.randint(0, k, (candidates,), generator=gen)
        j = torch.randint(0, k, (candidates,), generator=gen)
        keep = (i // m) != (j // m)
        i, j = i[keep], j[keep]
        gi, gj = i // m, j // m
        base = torch.arange(m)
        bi = cols[(gi[:, None] * m + base)]                      # (P, M, R)
        bj = cols[(gj[:, None] * m + base)]
        old = _kept(bi.transpose(1, 2), n) + _kept(bj.transpose(1, 2), n)
        ni, nj = bi.clone(), bj.clone()
        rows = torch.arange(len(i))
        ni[rows, i % m] = cols[j]
        nj[rows, j % m] = cols[i]
        gain = _kept(ni.transpose(1, 2), n) + _kept(nj.transpose(1, 2), n) - old
        order = torch.argsort(gain, descending=True)
        used: set[int] = set()
        applied = 0
        for p in order.tolist():
            if gain[p] <= 1e-6 * float(old[p]):
                break
            a, b = int(gi[p]), int(gj[p])
            if a in used or b in used:
                continue
            used.update((a, b))
            x, y = int(i[p]), int(j[p])
            cols[[x, y]] = cols[[y, x]]
            perm[[x, y]] = perm[[y, x]]
            applied += 1
        idle = 0 if applied else idle + 1
        if idle >= patience:
            break
    return perm


@torch.no_grad()
def permute_producer_consumer(producer: nn.Linear, consumer: nn.Linear,
                              perm: torch.Tensor) -> None:
    """In place: producer output features and consumer input features both reordered by
    ``perm`` (so ``consumer(f(producer(x)))`` is unchanged for element-wise ``f``).
    Call before masks are attached."""
    if producer.out_features != consumer.in_features or perm.numel() != consumer.in_features:
        raise ValueError(f"producer has {producer.out_features} outputs, consumer "
                         f"{consumer.in_features} inputs, permutation {perm.numel()}")
    pw, cw = original_weight(producer), original_weight(consumer)
    pw.copy_(pw[perm])
    if producer.bias is not None:
        producer.bias.copy_(producer.bias[perm])
    cw.copy_(cw[:, perm])


class InputPermuted(nn.Module):
    """``linear`` with its columns permuted by ``perm`` and its input gathered to match:
    ``forward(x) = linear(x[..., perm])``, the same function as the original layer."""

    def __init__(self, linear: nn.Linear, perm: torch.Tensor):
        super().__init__()
        with torch.no_grad():
            w = original_weight(linear)
            w.copy_(w[:, perm])
        self.linear = linear
        self.register_buffer("perm", perm.clone().long())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.index_select(-1, self.perm))


def best_permutation(layer: nn.Module, n: int = 2, m: int = 4, **search) -> torch.Tensor:
    return search_permutation(to_view(original_weight(layer)), n, m, **search)
