"""Time the global/LAMP selection of ``spruce.allocation`` on one CPU thread.

    PYTHONPATH=src python benchmarks/allocation/global_selection.py [--billion]

Prints, for MiniLM-L6's 36 prunable matrices (10.6M weights, random scores): the pooled
selection under ``global`` and ``lamp`` and a whole ``spruce.prune(scope=...)`` of a
MiniLM-shaped BERT built from its config. ``--billion`` adds a 1.07B-score pool (64 layers
of 2^24 random float32 scores): time, exact kept count and peak resident memory.
"""

from __future__ import annotations

import argparse
import math
import resource
import time

import torch

from spruce.allocation import _lamp_normalise, _pooled_selection, pooled_keep


def minilm_pool() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    shapes = [(384, 384)] * 4 + [(1536, 384), (384, 1536)]
    pool = {}
    for layer in range(6):
        for i, (r, k) in enumerate(shapes):
            g = torch.randn(r * k, dtype=torch.float64).square()
            pool[f"{layer}.{i}"] = (g, torch.ones((), dtype=torch.float64).expand(r * k))
    return pool


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def selection(pool, density: float) -> None:
    total = sum(g.numel() for g, _ in pool.values())
    for scope, norm in (("global", None), ("lamp", _lamp_normalise)):
        keep, dt = timed(lambda norm=norm: _pooled_selection(pool, density, norm))
        kept = sum(int(k.sum()) for k in keep.values())
        print(f"selection {scope:6s} {total / 1e6:.1f}M groups: {dt:6.2f} s, kept {kept} "
              f"(target {math.floor(density * total + 0.5)})")


def whole_prune(density: float) -> None:
    import spruce
    from transformers import BertConfig, BertModel
    cfg = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, vocab_size=1000)
    for scope in ("global", "lamp"):
        model = BertModel(cfg).eval()
        report, dt = timed(lambda model=model, scope=scope: spruce.prune(
            model, "element", density, scope=scope, exclude="pooler"))
        print(f"spruce.prune element scope={scope:6s} ({report.total / 1e6:.1f}M weights): "
              f"{dt:6.2f} s, density {report.overall_density:.6f}")


def billion(density: float) -> None:
    gen = torch.Generator().manual_seed(0)
    pool = {f"l{i}": (torch.rand(1 << 24, generator=gen), 1.0) for i in range(64)}
    total = 64 << 24
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    target = math.floor(density * total + 0.5)
    keep, dt = timed(lambda: pooled_keep(pool, target))
    kept = sum(int(k.sum()) for k in keep.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"selection global {total / 1e9:.2f}B float32 scores: {dt:6.2f} s, kept {kept} "
          f"(target {target}), peak RSS {peak:.1f} GiB (scores + flags alone "
          f"{total * 5 / 2**30:.1f} GiB; {rss:.1f} GiB before)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--billion", action="store_true", help="also run the 1B pool")
    parser.add_argument("--density", type=float, default=0.5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread")
    selection(minilm_pool(), args.density)
    whole_prune(args.density)
    if args.billion:
        billion(args.density)


if __name__ == "__main__":
    main()
