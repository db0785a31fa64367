"""Held-out metrics: top-1/top-5 accuracy for images, accuracy and F1 for QQP.

Each rank evaluates its share of the split (``eval_plan``); the counts are summed over
ranks, so the numbers are those of the whole split whatever the number of processes.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import DataSplits, eval_plan
from .distributed import Dist, all_reduce_sum


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return tuple(t.to(device, non_blocking=True) for t in batch)


def logits_and_labels(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` on an image ``(x, y)`` or a text dict batch; HF outputs give .logits."""
    if isinstance(batch, dict):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        out, labels = model(**inputs), batch["labels"]
    else:
        x, labels = batch
        out = model(x)
    return getattr(out, "logits", out), labels


def autocast(device: torch.device, enabled: bool, dtype: str):
    if not enabled or device.type != "cuda":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(model: nn.Module, data: DataSplits, d: Dist, batch_size: int,
             amp: bool = False, amp_dtype: str = "bf16") -> dict[str, float | None]:
    was_training = model.training
    model.eval()
    # loss sum, samples, top-1 hits, top-5 hits, true positives, false positives, false negatives
    sums = torch.zeros(7, dtype=torch.float64)
    for indices, seeds in eval_plan(len(data.test), batch_size, d.rank, d.world):
        batch = to_device(data.test.batch(indices, seeds), d.device)
        with autocast(d.device, amp, amp_dtype):
            logits, y = logits_and_labels(model, batch)
        logits = logits.float()
        sums[0] += float(F.cross_entropy(logits, y, reduction="sum"))
        sums[1] += y.numel()
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        sums[2] += float((top[:, 0] == y).sum())
        sums[3] += float((top == y[:, None]).any(-1).sum())
        pred = top[:, 0]
        sums[4] += float(((pred == 1) & (y == 1)).sum())
        sums[5] += float(((pred == 1) & (y != 1)).sum())
        sums[6] += float(((pred != 1) & (y == 1)).sum())
    all_reduce_sum(sums, d)
    model.train(was_training)
    return _metrics(sums, data.task, data.num_classes)


def _metrics(s: torch.Tensor, task: str, num_classes: int) -> dict[str, float | None]:
    n = max(float(s[1]), 1.0)
    out: dict[str, float | None] = {"loss": float(s[0]) / n}
    if task == "text":
        tp, fp, fn = float(s[4]), float(s[5]), float(s[6])
        out["accuracy"] = float(s[2]) / n
        out["f1"] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    else:
        out["top1"] = float(s[2]) / n
        out["top5"] = float(s[3]) / n if num_classes > 5 else None
    return out


def headline_key(metrics: dict[str, float | None]) -> str | None:
    """The metric a table shows: top-1 for images, accuracy for text, else the first key
    (an evaluator hook puts its headline first); None for no metrics."""
    for key in ("top1", "accuracy"):
        if metrics.get(key) is not None:
            return key
    return next(iter(metrics), None)


def headline(metrics: dict[str, float | None]) -> float:
    """The value of :func:`headline_key` (NaN when there is none)."""
    key = headline_key(metrics)
    value = metrics.get(key) if key is not None else None
    return float("nan") if value is None else float(value)
