"""What a learned mask is trained against: the task loss with labels, or distillation from
the dense model when there are none.

An objective is ``fn(outputs, targets) -> scalar loss``; ``outputs`` is what the masked
model returns for a batch (logits or embeddings), ``targets`` the labels or the dense
model's outputs for the same batch (computed once, without gradients).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with integer labels."""
    return F.cross_entropy(logits.float(), labels)


def kl_logits(logits: torch.Tensor, teacher_logits: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    """KL(teacher ‖ student) on softmax(logits / t), times t² (Hinton et al.)."""
    log_p = F.log_softmax(logits.float() / t, -1)
    log_q = F.log_softmax(teacher_logits.float() / t, -1)
    return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * t * t


def cosine(emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """1 − mean cosine similarity of embeddings [B, D]."""
    return 1.0 - F.cosine_similarity(emb.float(), teacher_emb.float(), dim=-1).mean()


def mse(emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(emb.float(), teacher_emb.float())


OBJECTIVES: dict[str, Objective] = {"task": task_loss, "kl": kl_logits, "cosine": cosine,
                                    "mse": mse}


def get_objective(name_or_fn: str | Objective) -> Objective:
    if callable(name_or_fn):
        return name_or_fn
    if name_or_fn not in OBJECTIVES:
        raise ValueError(f"unknown objective {name_or_fn!r}; valid: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name_or_fn]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence embedding as sentence-transformers computes it for all-MiniLM-L6-v2: the
    mean of the token states [B, L, D] over the non-padding tokens → [B, D]."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
