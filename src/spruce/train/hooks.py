"""The training loop's two hooks: what it minimises and what it measures.

- ``objective(net, batch) -> loss``: a scalar tensor that ``train_step`` minimises in place
  of ``F.cross_entropy(logits, labels)`` — e.g. distillation to a dense teacher's outputs
  when there are no labels. ``net`` is the model as trained (the DDP wrapper under
  ``torchrun``), ``batch`` the split's batch already on the device. Everything else of the
  step still applies: autocast, the NaN check, the regularizers of trainable masks, the
  mean over DDP ranks in the logs, ``after_step``.
- ``evaluator(model) -> {name: value}``: the held-out metrics of every evaluation (epoch
  ends, or every ``eval_every`` steps) and of the final model, in place of the
  classification metrics. It is called on every rank, in eval mode, without gradients, on
  the unwrapped model; it should return the same numbers on every rank. Its first key is
  the headline (what ``TrainResult.accuracy``, the CSV plot and tables show), unless it
  returns ``top1`` or ``accuracy``.

With an objective and no evaluator, each evaluation is the mean objective over the test
split (``{"loss": ...}``), or nothing when the data has no test split.

Hooks are code, not state: a checkpoint records only whether a run had an objective, and a
resumed run must be given the same hooks (a run resumed without its objective would
continue on cross-entropy; it is refused instead).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..data import Split, eval_plan
from .distributed import Dist, all_reduce_sum
from .evaluate import autocast, to_device

Objective = Callable[[nn.Module, Any], torch.Tensor]
Evaluator = Callable[[nn.Module], dict[str, float]]


def objective_loss(objective: Objective, net: nn.Module, batch: Any) -> torch.Tensor:
    """``objective(net, batch)`` as a float32 scalar, or a ValueError saying what came back."""
    loss = objective(net, batch)
    if not isinstance(loss, torch.Tensor):
        raise ValueError(f"the objective returned a {type(loss).__name__}; it must return the "
                         "loss as a scalar tensor that carries gradients")
    if loss.dim() != 0:
        raise ValueError(f"the objective returned a tensor of shape {tuple(loss.shape)}; it "
                         "must return a scalar loss: reduce it (e.g. .mean())")
    return loss.float()


def run_evaluator(evaluator: Evaluator, model: nn.Module) -> dict[str, float | None]:
    """Call ``evaluator(model)`` in eval mode without gradients; check what it returns."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            metrics = evaluator(model)
    finally:
        model.train(was_training)
    if not isinstance(metrics, dict) or not all(isinstance(k, str) for k in metrics):
        raise ValueError(f"the evaluator returned {type(metrics).__name__}; it must return "
                         "a dict of metric name -> number, e.g. {'cosine': 0.93}")
    clash = {"step", "epoch", "density"} & set(metrics)
    if clash:
        raise ValueError(f"the evaluator returned {sorted(clash)}, which the loop writes "
                         "itself in every evaluation row; rename them")
    return {k: None if v is None else float(v) for k, v in metrics.items()}


def mean_objective(objective: Objective, split: Split, d: Dist, batch_size: int,
                   amp: bool = False, amp_dtype: str = "bf16") -> Evaluator:
    """An evaluator: the objective's mean over ``split`` (weighted by batch size, summed
    over ranks), for runs given an objective and no evaluator."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        sums = torch.zeros(2, dtype=torch.float64)  # loss × samples, samples
        for indices, seeds in eval_plan(len(split), batch_size, d.rank, d.world):
            batch = to_device(split.batch(indices, seeds), d.device)
            with autocast(d.device, amp, amp_dtype):
                loss = objective_loss(objective, model, batch)
            sums[0] += float(loss) * len(indices)
            sums[1] += len(indices)
        all_reduce_sum(sums, d)
        return {"loss": float(sums[0]) / max(float(sums[1]), 1.0)}

    return evaluate


def check_hooks(state: dict[str, Any], objective: Objective | None, path) -> None:
    """A checkpoint written with (without) an objective resumes only with (without) one."""
    had = state.get("hooks", {}).get("objective")
    if bool(had) != (objective is not None):
        was = f"the objective {had}" if had else "cross-entropy (no objective)"
        now = "an objective" if objective is not None else "none"
        raise ValueError(f"{path}: the run trained with {was} but is resumed with {now}; "
                         "pass the same objective= as the run that wrote the checkpoint")


def hook_names(objective: Objective | None, evaluator: Evaluator | None) -> dict[str, Any]:
    """What the checkpoint records of the hooks: their names (for messages only)."""
    def name(fn):
        return None if fn is None else getattr(fn, "__qualname__", type(fn).__name__)
    return {"objective": name(objective), "evaluator": name(evaluator)}
