"""Coupled channel pruning on the built-in digits: accuracy of a 50%-wide ResNet-18, and
whether the compacted model computes exactly what the masked one does.

Per seed:

1. a zoo ``resnet18`` with the CIFAR stem (3×3 stride-1 ``conv1``, no max-pool), its stem
   rebuilt for 1 input channel, 10 classes, trains dense on the digits at their native 8×8
   (spruce's fixed split: 1,437 training, 360 held-out images);
2. ``spruce.prune(pattern="channel", density=0.5, scope="coupled", criterion="magnitude")``
   masks half the units of every coupled group — inner channels and the residual streams
   (every conv, BatchNorm and shortcut of a stage at once); the logits stay whole;
3. the masked model fine-tunes with its masks (same optimizer and schedule, its own LR);
4. ``spruce.compact`` turns it into a model at half the widths, then ``spruce.bake`` drops
   the (now all-ones) mask parametrizations: a plain ``nn.Module``.

Reported per seed: held-out top-1 of the dense model, right after pruning, after the
fine-tune and of the compacted model; the largest absolute difference between the
compacted and the masked model's logits over the whole held-out split; parameters and
multiply-adds (conv + linear, per 8×8 image) of the dense and the compacted model; the
kept units of every group. ``results.json`` holds every number; ``--render`` writes a
``README.md`` table (seed rows, mean ± sd).

    PYTHONPATH=src python benchmarks/structure/digits_accuracy.py --seeds 0 1 2 \\
        --output benchmarks/results/cpu/digits-structure \\
        --render benchmarks/results/cpu/digits-structure
    # re-render the table from an existing results.json, no training:
    PYTHONPATH=src python benchmarks/structure/digits_accuracy.py --only-render \\
        --render benchmarks/results/cpu/digits-structure

Threads: one by default. On a busy 2-core machine one thread ran a training step 7× faster
than two (the second thread waits on the first whenever another process holds a core).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import spruce
from spruce.data.base import DataSplits
from spruce.data.digits import load_digits
from spruce.errors import SpruceError
from spruce.patterns.base import kept_count
# a sibling module: the script's folder is on sys.path (TARGET_DROP re-exported with the rest)
from digits_report import TARGET_DROP as TARGET_DROP
from digits_report import environment, render, summary


@dataclass(frozen=True)
class Recipe:
    """How one seed trains, prunes and fine-tunes."""

    epochs: int = 10  # dense training from scratch
    finetune_epochs: int = 10  # masked fine-tune after pruning
    lr: float = 0.05  # dense peak LR (SGD + cosine to 0)
    finetune_lr: float = 0.02  # fine-tune peak LR, same schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch: int = 128
    density: float = 0.5  # fraction of the units of every coupled group kept
    image_size: int = 8  # native digits; larger sizes upsample bilinearly
    limit_train: int | None = None  # first N training images only (tests)
    limit_test: int | None = None  # first N held-out images only (tests)
    device: str = "cpu"
    npz: str | None = None  # digits from an .npz instead of scikit-learn (spruce.data.digits)


# -- data and model ---------------------------------------------------------------------

def digits(recipe: Recipe) -> DataSplits:
    """spruce's digits split at ``recipe.image_size``, one channel, optionally cut short."""
    d = load_digits(image_size=recipe.image_size, channels=1, npz=recipe.npz)
    for split, limit in ((d.train, recipe.limit_train), (d.test, recipe.limit_test)):
        split.images, split.labels = (t[:limit].to(recipe.device)
                                      for t in (split.images, split.labels))
    return d


def resnet18_digits(seed: int) -> nn.Module:
    """Zoo ResNet-18 for cifar10 (CIFAR stem, 10 classes) with a 1-channel stem conv.

    ``zoo.build`` has no input-channel option, so ``conv1`` is rebuilt as
    ``Conv2d(1, 64, 3, 1, 1)`` with the zoo's kaiming init, under the same seed.
    """
    model = spruce.zoo.build("resnet18", "cifar10", seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


# -- training and evaluation ------------------------------------------------------------

def train(model: nn.Module, d: DataSplits, epochs: int, lr: float, recipe: Recipe,
          seed: int) -> float:
    """SGD (momentum, weight decay) with a per-step cosine LR from ``lr`` to 0; returns
    the seconds spent."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay, nesterov=True)
    x, y = d.train.images, d.train.labels
    steps_per_epoch = math.ceil(len(y) / recipe.batch)
    total = max(1, epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen).to(y.device)
        for i in range(0, len(y), recipe.batch):
            idx = order[i:i + recipe.batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return time.perf_counter() - t0


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def top1(out: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float((out.argmax(1) == y).float().mean())


def macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of every Conv2d and Linear for one sample of ``x`` (weights times
    output positions; masks are not looked at — call it on dense or compacted models)."""
    positions: dict[str, int] = {}
    hooks = [m.register_forward_hook(
        lambda m, i, o, n=n: positions.__setitem__(n, o[0].numel() // o.shape[1]))
        for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        logits(model, x[:1])
    finally:
        for h in hooks:
            h.remove()
    return sum(m.weight.numel() * positions[n]
               for n, m in model.named_modules() if n in positions)


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- one seed ---------------------------------------------------------------------------

def widths(model: nn.Module) -> dict[str, list[int]]:
    """``{layer: [in, out]}`` of every Conv2d and Linear."""
    return {n: [m.weight.shape[1], m.weight.shape[0]] for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


def run_seed(seed: int, recipe: Recipe, d: DataSplits | None = None) -> dict[str, Any]:
    """Train dense, prune coupled, fine-tune with masks, compact; every number of one seed.

    Returns a dict with ``top1`` (dense, pruned, finetuned, compacted), ``max_abs_logit_diff``
    (compacted vs masked, whole held-out split), ``params`` / ``macs`` (dense, compacted),
    ``groups`` (units and kept per coupled group), ``widths`` (dense and compacted layer
    shapes), ``seconds`` per phase. The compacted model is under the key ``model`` (not
    JSON: pop it before writing).
    """
    d = digits(recipe) if d is None else d
    xt, yt = d.test.images, d.test.labels
    model = resnet18_digits(seed).to(recipe.device)
    seconds = {"dense": train(model, d, recipe.epochs, recipe.lr, recipe, seed)}
    acc = {"dense": top1(logits(model, xt), yt)}
    dense_params, dense_macs, dense_widths = params(model), macs(model, xt), widths(model)

    t0 = time.perf_counter()
    report = spruce.prune(model, pattern="channel", density=recipe.density, scope="coupled",
                          criterion="magnitude", example_input=xt[:8])
    seconds["prune"] = time.perf_counter() - t0
    acc["pruned"] = top1(logits(model, xt), yt)
    seconds["finetune"] = train(model, d, recipe.finetune_epochs, recipe.finetune_lr, recipe,
                                seed + 1000)
    masked = logits(model, xt)
    acc["finetuned"] = top1(masked, yt)

    t0 = time.perf_counter()
    small = spruce.bake(spruce.compact(model, example_input=xt[:8]))
    seconds["compact"] = time.perf_counter() - t0
    out = logits(small, xt)
    acc["compacted"] = top1(out, yt)
    return {
        "seed": seed, "top1": acc,
        "max_abs_logit_diff": float((out - masked).abs().max()),
        "same_predictions": int((out.argmax(1) == masked.argmax(1)).sum()),
        "test_images": len(yt),
        "params": {"dense": dense_params, "compacted": params(small)},
        "macs": {"dense": dense_macs, "compacted": macs(small, xt)},
        "groups": report.extra["groups"],
        "widths": {"dense": dense_widths, "compacted": widths(small)},
        "seconds": seconds, "model": small,
    }


def check_kept(result: dict[str, Any], density: float) -> list[str]:
    """Groups whose kept count is not ``kept_count(density, units)`` (logit groups, kept
    whole by design, excepted)."""
    return [g["group"] for g in result["groups"]
            if g["reason"] is None and g["kept"] != kept_count(density, g["units"])]


# -- the command line (the summary and the README: digits_report.py) --------------------

def _one(seed: int, recipe: Recipe, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    r = run_seed(seed, recipe)
    r.pop("model")
    return r


def _seeds(seeds: list[int], recipe: Recipe, threads: int, jobs: int):
    """Results of every seed, in order; ``jobs > 1`` runs seeds in parallel processes."""
    if jobs <= 1:
        yield from (_one(s, recipe, threads) for s in seeds)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
        yield from pool.map(_one, seeds, [recipe] * len(seeds), [threads] * len(seeds))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=Recipe.epochs, help="dense epochs")
    p.add_argument("--finetune-epochs", type=int, default=None,
                   help="masked fine-tune epochs (default: --epochs)")
    p.add_argument("--lr", type=float, default=Recipe.lr)
    p.add_argument("--finetune-lr", type=float, default=Recipe.finetune_lr)
    p.add_argument("--batch", type=int, default=Recipe.batch)
    p.add_argument("--image-size", type=int, default=Recipe.image_size)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--digits-npz", help="read the digits from this .npz (no scikit-learn)")
    p.add_argument("--output", type=Path, help="directory for results.json")
    p.add_argument("--render", type=Path, help="directory for README.md")
    p.add_argument("--note", action="append", default=[],
                   help="a line for the README's notes (what else was tried); repeatable")
    p.add_argument("--only-render", action="store_true",
                   help="no training: render --render/README.md from --render/results.json")
    a = p.parse_args(argv)
    if a.only_render:
        if a.render is None:
            raise SpruceError("digits_accuracy: --only-render needs --render DIR holding a "
                              "results.json")
        path = a.render / "results.json"
        res = json.loads(path.read_text())
        if a.note:  # notes added after the run are kept with its numbers
            res["notes"] = res.get("notes", []) + a.note
            path.write_text(json.dumps(res, indent=1) + "\n")
        (a.render / "README.md").write_text(render(res))
        return 0
    torch.set_num_threads(a.threads)
    recipe = Recipe(epochs=a.epochs, finetune_epochs=a.finetune_epochs or a.epochs, lr=a.lr,
                    finetune_lr=a.finetune_lr, batch=a.batch, image_size=a.image_size,
                    device=a.device, npz=a.digits_npz)
    d = digits(recipe)
    runs = []
    for r in _seeds(a.seeds, recipe, a.threads, a.jobs):
        seed = r["seed"]
        bad = check_kept(r, recipe.density)
        if bad:
            raise SpruceError(f"digits_accuracy: seed {seed}: groups {bad} do not keep "
                              f"round({recipe.density} * units) units")
        runs.append(r)
        t = r["top1"]
        print(f"seed {seed}: dense {t['dense']:.2f}  pruned {t['pruned']:.2f}  "
              f"fine-tuned {t['finetuned']:.2f}  compacted {t['compacted']:.2f}  "
              f"max|Δlogit| {r['max_abs_logit_diff']:.2e}  "
              f"({sum(r['seconds'].values()):.0f} s)", flush=True)
    res = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join(["python", *sys.argv]) if argv is None else
           " ".join(["digits_accuracy.py", *argv]),
           "environment": environment(), "recipe": asdict(recipe),
           "model": "zoo resnet18 (cifar10: CIFAR stem), conv1 rebuilt for 1 channel, 10 classes",
           "data": f"spruce digits split: {len(d.train)} train / {len(d.test)} held-out, "
                   f"{recipe.image_size}x{recipe.image_size}x1",
           "run": {"threads": a.threads, "jobs": a.jobs},
           "notes": a.note, "runs": runs, "summary": summary(runs)}
    if a.output:
        a.output.mkdir(parents=True, exist_ok=True)
        (a.output / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    if a.render:
        a.render.mkdir(parents=True, exist_ok=True)
        (a.render / "README.md").write_text(render(res))
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
