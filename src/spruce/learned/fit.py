"""Train the learned masks alone against any objective — the adapter around the training
loop's pieces.

``spruce.train.Trainer`` computes ``F.cross_entropy(logits, labels)`` in ``train_step`` and
classification metrics in ``evaluate``; with labels, learned masks train through it
unchanged (``TrainConfig(pattern="2:4", prune_mode="during", criterion="learned")`` and a
model whose weights are frozen). Distillation from the dense model has no labels and needs
another loss, so this module runs the same kind of step — ``lr_at`` schedule, AdamW on the
mask logits only (no weight decay), ``after_step`` on every mask, the same rich
``ProgressBar`` — around a caller's ``loss_at(step)``. The hook that would make it
unnecessary: ``Trainer(objective=fn(net, batch) -> loss)`` used in ``train_step`` in place
of the cross-entropy, and an ``evaluate`` that the objective may replace.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .masks import learned_layers


@dataclass
class FitResult:
    steps: int
    wall_s: float  # training time (evaluations excluded)
    history: list[dict[str, Any]] = field(default_factory=list)  # per log/eval row


def mask_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p.logits for p in learned_layers(model).values()]


def fit_masks(model: nn.Module, loss_at: Callable[[int], torch.Tensor], steps: int,
              lr: float = 0.05, schedule: str = "cosine", warmup: int = 0,
              log_every: int = 10, evaluate: Callable[[], dict[str, float]] | None = None,
              eval_every: int = 0, progress: bool = True) -> FitResult:
    """``steps`` AdamW updates of the mask logits of ``model``; ``loss_at(step)`` runs the
    masked model on that step's batch and returns the loss. Weights must be frozen (the
    optimizer holds the logits alone, and a weight with ``requires_grad`` is an error)."""
    from ..train.logs import ProgressBar  # the training package sits above this one
    from ..train.schedule import lr_at

    thawed = [n for n, p in model.named_parameters()
              if p.requires_grad and not n.endswith(".logits")]
    if thawed:
        raise ValueError(f"{len(thawed)} weights still train (first: {thawed[0]}); learned "
                         "masks keep the weights frozen: model.requires_grad_(False) before "
                         "attach_learned, or attach_learned(freeze=True)")
    params = mask_parameters(model)
    if not params:
        raise ValueError("the model carries no learned masks: attach_learned(model) first")
    masks = list(learned_layers(model).values())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    result, window = FitResult(0, 0.0), []
    model.train()
    with ProgressBar(steps, 0, progress) as bar:
        for step in range(steps):
            t0 = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps, lr, schedule, warmup)
            loss = loss_at(step)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"mask loss is {value} at step {step}; lower lr "
                                         f"(now {lr:g}) or raise tau")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for mask in masks:
                mask.after_step()
            result.wall_s += time.perf_counter() - t0
            result.steps = step + 1
            window.append(value)
            bar.update(step + 1, 0, value, 0.0)
            if (step + 1) % log_every == 0 or step + 1 == steps:
                row = {"step": step + 1, "loss": sum(window) / len(window),
                       "tau": masks[0].tau, "wall_s": result.wall_s}
                window = []
                if evaluate is not None and eval_every and \
                        ((step + 1) % eval_every == 0 or step + 1 == steps):
                    model.eval()
                    row.update(evaluate())
                    model.train()
                    bar.note(", ".join(f"{k} {v:.4g}" for k, v in row.items()))
                result.history.append(row)
    model.eval()
    return result


def flips(model: nn.Module, reference: dict[str, torch.Tensor]) -> float:
    """Fraction of runs whose argmax pattern differs from ``reference`` (hard masks)."""
    changed = total = 0
    for name, mask in learned_layers(model).items():
        now = mask.hard_mask()
        ref = reference[name].to(now.device)
        runs = (now != ref).reshape(now.shape[0], -1, mask.spec.m).any(-1)
        changed += int(runs.sum())
        total += runs.numel()
    return changed / max(1, total)


