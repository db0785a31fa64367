"""Learned 2:4 vs magnitude and channel-permutation 2:4 on a ResNet-18 (CIFAR-style) on digits.

A zoo ``resnet18`` (CIFAR stem, 10 classes) first trains dense on the built-in digits
(8×8 upsampled to 32×32×3) with the project's training loop (``spruce.train.train``: SGD,
momentum 0.9, cosine LR, weight decay 5e-4). Its weights are then frozen and every conv and
the fc are pruned to 2:4 — except the stem ``conv1``, whose view is 64×27 (K = 3·3·3 = 27 is
not a multiple of 4: no 2:4 run layout, and no 2:4 kernel runs it); it stays dense in every
row. Rows, all from the same dense weights:

- dense;
- magnitude 2:4;
- permuted 2:4 (BasicBlock producer): in every BasicBlock ``conv1 → bn1 → ReLU → conv2``
  the input channels of conv2 are permuted (Pool & Yu's channel-swap search on its view,
  moving whole 3×3 units) together with conv1's output channels and bn1's weight, bias and
  running statistics — the same function, no run-time cost; magnitude 2:4 everywhere
  (the block conv1s, the downsample 1×1 convs and fc read the residual stream, shared by
  several consumers, so they cannot be permuted for free);
- permuted 2:4 (every layer, input gathered): every pruned conv/Linear permutes its input
  channels and gathers ``x[:, perm]`` on the fly (same function, one gather per call);
- learned 2:4: Gumbel-Softmax over the 6 patterns of every run (Danhofer 2024), hard
  straight-through with τ annealed 1 → 0.1 exponentially (what worked best on MiniLM),
  weights frozen, magnitude init with logit gaps scaled by ``--init-scale 50`` (the argmax
  starts as magnitude 2:4 and the samples stay close to it). With MiniLM's scale 5 the
  first samples are nearly uniform over the patterns: in a CPU check (16×16 inputs, 3 mask
  epochs) the sampled-mask training loss fell to ~0.2 but the argmax masks kept for
  inference reached only 60–69% held-out top-1 (magnitude 2:4: 39%, dense 98.9%); scale
  20 gave 98.1%, scale 50 98.6%. It trains through the project's training loop itself
  (``TrainConfig(pattern="2:4", prune_mode="during", criterion="learned")``; with the
  weights frozen the optimizer holds only the mask logits, AdamW without weight decay) on
  the task's cross-entropy, so ``fit_masks`` (the adapter for label-free distillation) is not
  needed here.

BatchNorm: while the masks learn, every BatchNorm is replaced by a frozen one that always
normalises with the dense model's running statistics (train mode included) and trains
nothing, so only the logits change. No row recalibrates BatchNorm: every row is evaluated
with the dense running statistics, so the comparison isolates the masks.

Per row: held-out top-1, agreement of the argmax predictions with the dense model's, kept
fraction of Σ|w| of the pruned layers, steps (training steps; for permutations the swap-
search iterations run) and wall time. Writes ``DIR/cnn{tag}.json`` and
``DIR/cnn{tag}-curve.png`` (mask learning: train loss, held-out loss and top-1 per epoch,
with the baselines), prints the table last.

    # on a machine with scikit-learn, once (for a GPU machine without it):
    python -c "import numpy as np; from sklearn.datasets import load_digits as l; \\
        d = l(); np.savez_compressed('digits.npz', images=d.images, target=d.target)"
    # GPU (sized for well under 3 minutes on one H200):
    PYTHONPATH=src:. python benchmarks/learned_masks/cnn.py --device cuda --digits-npz digits.npz
    # CPU smoke (< 1 minute on 2 cores):
    PYTHONPATH=src:. python benchmarks/learned_masks/cnn.py --epochs 1 --mask-epochs 1 \\
        --limit 128 --image-size 16 --perm-iters 3 --perm-candidates 128 --quiet --tag=-smoke
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import spruce
from spruce import data as datasets
from spruce.data import DataSplits, TensorImages, steps_per_epoch
from spruce.learned.permute import permute_chain, permute_inputs
from spruce.masks import get_mask, original_weight
from spruce.patterns import get_pattern
from spruce.train import TrainConfig, train
from spruce.train.models import build_model
from spruce.view import prunable_layers, view_shape
from spruce.zoo.resnet import BasicBlock


class FrozenBatchNorm2d(nn.Module):
    """A BatchNorm2d's eval-mode function in every mode: normalises with the stored running
    statistics and holds nothing trainable (mask learning changes the logits alone)."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.eps = bn.eps
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(name, getattr(bn, name).detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            False, 0.0, self.eps)


def freeze_batchnorm(model: nn.Module) -> int:
    """In place: every BatchNorm2d → :class:`FrozenBatchNorm2d`; returns how many."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    for name in names:
        spruce.masks.set_submodule(model, name, FrozenBatchNorm2d(model.get_submodule(name)))
    return len(names)


def unprunable(model: nn.Module, m: int = 4) -> dict[str, str]:
    """Layers whose view has K not divisible by M, with the reason (they stay dense)."""
    return {name: f"view {r}x{k}: K={k} not divisible by {m}, left dense in every row"
            for name, layer in prunable_layers(model)[0].items()
            for r, k in [view_shape(layer)] if k % m}


def load_data(args) -> DataSplits:
    ds = datasets.load("digits", image_size=args.image_size, npz=args.digits_npz)
    if args.limit:
        ds.train = TensorImages(ds.train.images[:args.limit], ds.train.labels[:args.limit])
        ds.test = TensorImages(ds.test.images[:args.limit], ds.test.labels[:args.limit])
        ds.notes.append(f"--limit {args.limit}: first {args.limit} samples of each split")
    return ds


def base_config(args, **over) -> TrainConfig:
    cfg = dict(model="resnet18", data="digits", batch_size=args.batch, seed=args.seed,
               device=args.device, progress=not args.quiet, log_every=5,
               threads=args.threads if args.device == "cpu" else None)
    return TrainConfig(**{**cfg, **over})


def train_dense(args, ds: DataSplits):
    model = build_model("resnet18", ds.num_classes, ds.zoo_dataset, args.seed)
    cfg = base_config(args, epochs=args.epochs, optimizer="sgd", lr=args.lr, momentum=0.9,
                      weight_decay=5e-4, schedule="cosine")
    return model, train(cfg, model=model, data=ds)


@torch.no_grad()
def predict(model: nn.Module, split: TensorImages, device: str, bs: int = 256) -> torch.Tensor:
    model.eval().to(device)
    return torch.cat([model(split.images[i:i + bs].to(device)).argmax(-1).cpu()
                      for i in range(0, len(split), bs)])


def kept_magnitude(model: nn.Module, exclude: tuple[str, ...]) -> float:
    """Fraction of Σ|w| of the pruned layers their masks keep (checks exact 2:4 too)."""
    vec, kept, total = get_pattern("2:4"), 0.0, 0.0
    for name, layer in prunable_layers(model, exclude)[0].items():
        w, mask = original_weight(layer).detach().abs().reshape(view_shape(layer)), get_mask(layer)
        assert mask is not None and vec.conforms(mask) is None, f"{name}: not 2:4"
        assert int(mask.sum()) * 2 == mask.numel(), name
        kept += float((w * mask).sum())
        total += float(w.sum())
    return kept / total


def row(name, model, ds, dense_pred, exclude, steps, wall, note="", device="cpu") -> dict:
    pred = predict(model, ds.test, device)
    return {"method": name, "top1": float((pred == ds.test.labels).float().mean()),
            "agreement": float((pred == dense_pred).float().mean()),
            "kept_abs_w": kept_magnitude(model, exclude) if name != "dense" else 1.0,
            "steps": steps, "wall_s": round(wall, 2), "note": note}


@torch.no_grad()
def max_logit_change(model: nn.Module, base: nn.Module, x: torch.Tensor) -> float:
    return float((model.eval()(x) - base.eval()(x)).abs().max())


def search_kwargs(args) -> dict:
    return {"max_iters": args.perm_iters, "candidates": args.perm_candidates,
            "seed": args.seed}


def summary(found: dict) -> dict:
    return {k: {"iters": r.iters, "swaps": r.swaps, "efficacy_gain": r.after / r.before - 1}
            for k, r in found.items()}


def permuted_blocks(base, exclude, x, args):
    model = copy.deepcopy(base)
    t0, found = time.perf_counter(), {}
    for name, block in model.named_modules():
        if isinstance(block, BasicBlock):
            found[f"{name}.conv2"] = permute_chain(block.conv1, block.conv2, block.bn1,
                                                   **search_kwargs(args))
    drift = max_logit_change(model, base, x)
    spruce.prune(model, "2:4", criterion="magnitude", exclude=exclude)
    return model, found, drift, time.perf_counter() - t0


def permuted_all(base, exclude, x, args):
    model = copy.deepcopy(base)
    t0 = time.perf_counter()
    found = permute_inputs(model, exclude, **search_kwargs(args))
    drift = max_logit_change(model, base, x)
    spruce.prune(model, "2:4", criterion="magnitude", exclude=exclude)
    return model, found, drift, time.perf_counter() - t0


def learned(base, ds, exclude, args):
    """Mask logits trained by ``spruce.train`` in ``during`` mode; weights and BN frozen."""
    model = copy.deepcopy(base)
    freeze_batchnorm(model)
    model.requires_grad_(False)
    total = args.mask_epochs * steps_per_epoch(len(ds.train), args.batch)
    crit = {"name": "learned", "init": args.init, "init_scale": args.init_scale,
            "tau": args.tau, "tau_end": args.tau_end, "tau_schedule": args.tau_schedule,
            "anneal_steps": total, "hard": not args.soft, "seed": args.seed}
    with tempfile.TemporaryDirectory() as tmp:  # the loop's CSV logs; its model file dropped
        cfg = base_config(args, epochs=args.mask_epochs, optimizer="adamw", lr=args.mask_lr,
                          momentum=0.9, weight_decay=0.0, schedule="cosine", pattern="2:4",
                          prune_mode="during", criterion=crit, exclude=exclude,
                          output=str(Path(tmp) / "learned.safetensors"))
        result = train(cfg, model=model, data=ds)
        logs = {k: [{f: float(v) for f, v in r.items() if v not in ("", None)}
                    for r in csv.DictReader(open(Path(tmp) / f"{k}_log.csv"))]
                for k in ("train", "eval")}
    return model, result, logs


def runs_changed(model: nn.Module, ref: nn.Module, exclude: tuple[str, ...]) -> float:
    """Fraction of 2:4 runs whose kept pattern differs between two pruned models."""
    ref_layers = prunable_layers(ref, exclude)[0]
    changed = total = 0
    for name, layer in prunable_layers(model, exclude)[0].items():
        diff = (get_mask(layer) != get_mask(ref_layers[name])).reshape(-1, 4).any(-1)
        changed, total = changed + int(diff.sum()), total + diff.numel()
    return changed / max(1, total)


def plot(logs: dict, baselines: dict[str, float], out: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    tr, ev = logs["train"], logs["eval"]
    a.plot([r["step"] for r in tr], [r["loss"] for r in tr], label="train loss (sampled masks)")
    a.plot([r["step"] for r in ev], [r["loss"] for r in ev], "o-", label="held-out loss (argmax)")
    a.set(xlabel="step", ylabel="cross-entropy", yscale="log")
    a.legend()
    a.grid(alpha=.3)
    b.plot([r["step"] for r in ev], [r["top1"] for r in ev], "o-", label="learned 2:4 (argmax)")
    for i, (name, v) in enumerate(baselines.items()):
        b.axhline(v, ls="--", color=f"C{i + 1}", label=name)
    b.set(xlabel="step", ylabel="held-out top-1")
    b.legend(fontsize=8)
    b.grid(alpha=.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--epochs", type=int, default=10, help="dense training epochs")
    ap.add_argument("--mask-epochs", type=int, default=20, help="mask learning epochs")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05, help="dense training (SGD)")
    ap.add_argument("--mask-lr", type=float, default=0.05, help="mask logits (AdamW)")
    ap.add_argument("--tau", type=float, default=1.0)
    ap.add_argument("--tau-end", type=float, default=0.1)
    ap.add_argument("--tau-schedule", default="exp")
    ap.add_argument("--soft", action="store_true", help="soft Gumbel masks (default: hard ST)")
    ap.add_argument("--init", default="magnitude")
    ap.add_argument("--init-scale", type=float, default=50.0, help="magnitude init: logit "
                    "gap per unit of a run's relative |w| (see the module doc)")
    ap.add_argument("--perm-iters", type=int, default=200, help="swap-search iterations/layer")
    ap.add_argument("--perm-candidates", type=int, default=2048)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--limit", type=int, default=0, help="first N samples of each split "
                    "(smoke runs; 0: all)")
    ap.add_argument("--digits-npz", default=None, help=".npz with images/target (no sklearn)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", default="runs/learned-masks")
    ap.add_argument("--tag", default="")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_data(args)
    base, dense = train_dense(args, ds)
    base.eval().requires_grad_(False)
    exclude = unprunable(base)
    ex = tuple(exclude)
    dense_pred = predict(base, ds.test, args.device)
    x = ds.test.images[:32].to(args.device)
    rows = [row("dense", base, ds, dense_pred, ex, dense.steps, dense.wall_s,
                f"spruce.train, {args.epochs} epochs SGD", args.device)]
    m = copy.deepcopy(base)
    t0 = time.perf_counter()
    spruce.prune(m, "2:4", criterion="magnitude", exclude=ex)
    rows.append(row("magnitude 2:4", m, ds, dense_pred, ex, 0, time.perf_counter() - t0,
                    device=args.device))
    perms = {}
    for label, fn in [("permuted 2:4 (BasicBlock producer; magnitude elsewhere)",
                       permuted_blocks),
                      ("permuted 2:4 (every layer, input gathered)", permuted_all)]:
        pm, found, drift, wall = fn(base, ex, x, args)
        perms[label] = summary(found)
        rows.append(row(label, pm, ds, dense_pred, ex, sum(r.iters for r in found.values()),
                        wall, f"{len(found)} layers permuted; max |Δlogit| before masking "
                        f"{drift:.1e}; steps = swap-search iterations", args.device))
    lm, fit, logs = learned(base, ds, ex, args)
    label = f"learned 2:4 ({args.init} init, tau {args.tau}" + \
        (f"→{args.tau_end} {args.tau_schedule}" if args.tau_schedule != "constant" else "") + \
        (")" if args.soft else ", hard ST)")
    rows.append(row(label, lm, ds, dense_pred, ex, fit.steps, fit.wall_s,
                    f"spruce.train during/learned, weights+BN frozen; "
                    f"{runs_changed(lm, m, ex):.1%} of runs differ from magnitude 2:4",
                    args.device))
    env = {"torch": torch.__version__, "threads": args.threads, "device": args.device,
           "cpu": platform.processor() or platform.machine(),
           "python": platform.python_version(),
           "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None}
    result = {"args": vars(args), "env": env, "data": ds.describe(), "notes": ds.notes,
              "excluded": exclude, "rows": rows, "dense_history": dense.history,
              "mask_history": logs, "permutations": perms}
    (out / f"cnn{args.tag}.json").write_text(json.dumps(result, indent=1))
    plot(logs, {r["method"].split(" (")[0] + (" (all)" if "every" in r["method"] else
                                              " (block)" if "Block" in r["method"] else ""):
                r["top1"] for r in rows[:-1]},
         out / f"cnn{args.tag}-curve.png", f"ResNet-18 on digits, learned 2:4 ({fit.steps} steps)")
    print(f"{'method':58s} {'top1':>6s} {'agree':>6s} {'kept|w|':>7s} {'steps':>6s} {'wall s':>7s}")
    for r in rows:
        print(f"{r['method']:58s} {r['top1']:6.3f} {r['agreement']:6.3f} {r['kept_abs_w']:7.3f} "
              f"{r['steps']:6d} {r['wall_s']:7.2f}")


if __name__ == "__main__":
    main()
