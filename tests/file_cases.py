"""One model of every kind spruce saves — pruned with each pattern, compacted (with a
folded BatchNorm too), converted with each CPU backend, converted after compaction — each
with the architecture it loads into; and the environment of a child Python process that
loads such files from this checkout."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import spruce
from tests.hostile_files_kit import PRUNE, example, tiny

ROOT = Path(__file__).resolve().parents[1]


def child_env() -> dict:
    """This process's environment with spruce's sources and the tests importable."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


def bn_net() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.Flatten(), nn.Linear(8 * 4 * 4, 10)).eval()


def pruned_tiny(pattern: str) -> nn.Module:
    name, density, kw = PRUNE.get(pattern, (pattern, None, {}))
    model = tiny()
    spruce.prune(model, name, density, **kw)
    return model


def build_case(case: str) -> tuple[nn.Module, str, Callable[[], nn.Module]]:
    """``"kind:how"`` → (the model, the kind it saves as, its architecture's builder)."""
    kind, _, rest = case.partition(":")
    if kind == "masked":
        return pruned_tiny(rest), "masked", tiny
    if case == "compacted:bn-folded":
        model = bn_net()
        spruce.prune(model, "channel", 0.5, exclude=["4"])
        return spruce.compact(model, example_input=example(), fold_bn=True), kind, bn_net
    small = spruce.compact(pruned_tiny("group"), example_input=example())
    if kind == "compacted":
        return small, kind, tiny
    backend, _, after = rest.partition("+")
    source = small if after == "compacted" else pruned_tiny(
        {"csr": "element", "bsr": "block", "channel": "channel"}.get(backend, "group"))
    return spruce.convert(source, backend, example_input=example()), "converted", tiny


CASES = ["masked:element", "masked:2:4", "masked:block", "masked:group", "masked:channel",
         "compacted:group", "compacted:bn-folded", "converted:dense", "converted:groupwise",
         "converted:channel", "converted:csr", "converted:bsr", "converted:dense+compacted"]
# converted after compaction on a backend with its own tensors: loads since format version 2
CASES_SINCE_V2 = ["converted:groupwise+compacted", "converted:csr+compacted"]
