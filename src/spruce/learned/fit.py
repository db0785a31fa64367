"""Train the learned masks alone, through the training loop, against any objective.

With labels, learned masks need nothing here: ``TrainConfig(pattern="2:4",
prune_mode="during", criterion="learned")`` on a model whose weights are frozen. Without
labels — distillation from the dense model — :func:`fit_masks` runs the same loop
(``spruce.train.train``) with an ``objective`` hook in place of the cross-entropy and an
``evaluator`` hook in place of the classification metrics, on masks already attached by
:func:`~spruce.learned.attach_learned` (``prune_mode`` none): AdamW on the mask logits
only (no weight decay), the ``lr_at`` schedule over exactly ``steps`` optimizer steps,
``after_step`` on every mask (the τ schedule), the loop's batches (a pure function of the
seed and the epoch, so a run resumed from ``checkpoint_dir`` takes the same steps), its NaN
check, progress bar, logs and checkpoints. It only adds what is particular to masks over
frozen weights: the check that no weight trains, and τ in the history.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .masks import learned_layers
from .schedule import tau_at


@dataclass
class FitResult:
    steps: int
    wall_s: float  # training time (evaluations excluded)
    history: list[dict[str, Any]] = field(default_factory=list)  # per log/eval row
    metrics: dict[str, float | None] = field(default_factory=dict)  # of the final masks
    train: Any = None  # the loop's spruce.train.TrainResult


def mask_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p.logits for p in learned_layers(model).values()]


def check_frozen(model: nn.Module) -> None:
    """Learned masks train over frozen weights: a trainable weight, or no mask, is an error."""
    thawed = [n for n, p in model.named_parameters()
              if p.requires_grad and not n.endswith(".logits")]
    if thawed:
        raise ValueError(f"{len(thawed)} weights still train (first: {thawed[0]}); learned "
                         "masks keep the weights frozen: model.requires_grad_(False) before "
                         "attach_learned, or attach_learned(freeze=True)")
    if not mask_parameters(model):
        raise ValueError("the model carries no learned masks: attach_learned(model) first")


def fit_masks(model: nn.Module, objective: Callable[[nn.Module, Any], torch.Tensor], data: Any,
              steps: int, *, batch_size: int = 32, lr: float = 0.05, schedule: str = "cosine",
              warmup: int = 0, log_every: int = 10,
              evaluator: Callable[[nn.Module], dict[str, float]] | None = None,
              eval_every: int = 0, seed: int = 0, progress: bool = True,
              checkpoint_dir: str | None = None, resume: bool = False) -> FitResult:
    """``steps`` AdamW updates of the mask logits of ``model`` by ``spruce.train.train``.

    ``objective(net, batch) -> loss`` runs the masked model on one batch of ``data`` (a
    split such as ``spruce.data.Samples``, or a ``DataSplits``) and returns the scalar loss;
    ``evaluator(model) -> {name: value}`` runs every ``eval_every`` steps and at the end
    (eval mode: argmax masks). The run happens on the model's device. ``history`` holds
    the loop's training-log rows (every ``log_every`` steps and at epoch ends: mean loss
    since the previous row, lr, τ) merged by step with the evaluations.
    """
    from ..train import TrainConfig, train  # the training package sits above this one

    check_frozen(model)
    device = next(model.parameters()).device
    cfg = TrainConfig(model=type(model).__name__, data=getattr(data, "name", "custom"),
                      steps=steps, batch_size=batch_size, optimizer="adamw", lr=lr,
                      momentum=0.9, weight_decay=0.0, schedule=schedule, warmup_steps=warmup,
                      log_every=log_every, eval_every=eval_every, seed=seed,
                      device=str(device), progress=progress, checkpoint_dir=checkpoint_dir,
                      resume=resume)
    result = train(cfg, model, data, objective=objective, evaluator=evaluator)
    model.eval()
    history = _history(result, next(iter(learned_layers(model).values())).spec)
    return FitResult(result.steps, result.wall_s, history, result.metrics, result)


def _history(result: Any, spec: Any) -> list[dict[str, Any]]:
    """Log rows (with τ) and evaluation rows merged by step."""
    rows: dict[int, dict[str, Any]] = {}
    for r in result.log:
        rows[r["step"]] = {"step": r["step"], "epoch": r["epoch"], "lr": r["lr"],
                           "loss": r["loss"], "tau": tau_at(r["step"], spec.tau, spec.tau_end,
                                                            spec.tau_schedule,
                                                            spec.anneal_steps)}
    for r in result.history:
        extra = {k: v for k, v in r.items() if k not in ("epoch", "density")}
        rows.setdefault(r["step"], {}).update(extra)
    return [rows[s] for s in sorted(rows)]


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


