"""Criteria that learn the mask while the model trains — the during-training methods the
characterization paper (Liu et al. 2023, §3.3) pairs with each pattern:

- ``sr-ste``  N:M (vector-wise): SR-STE, Zhou et al. 2021, "Learning N:M fine-grained
  structured sparse neural networks from scratch" (ICLR).
- ``block-gate``  block-wise: trainable gates, Vooturi et al. 2019, "Dynamic block sparse
  reparameterization of convolutional neural networks" (ICCV workshops).
- ``dst``  group-wise: trainable thresholds, Liu et al. 2020, "Dynamic sparse training:
  find efficient sparse network from scratch with trainable masked layers" (ICLR).

Each criterion makes a :class:`TrainableMask` per layer — a parametrization that sits after
the layer's :class:`~spruce.masks.WeightMask` — through ``parametrization(shape, pattern,
group_ids, n_groups)``. The trainer passes the pattern's group ids as data (criteria sit
below patterns and never import them), adds each mask's ``regularizer()`` to the loss and
calls ``after_step()`` after every optimizer step. At the end ``keep_mask`` gives a boolean
mask with the pattern's exact structure and ``bake`` the weight to keep, which the trainer
turns into an ordinary WeightMask. These methods do not aim at a fixed density (their
papers do not either): the achieved density is what they learned, and it is reported.

As criteria of the registry (``prune(..., criterion="dst")``) they score an entry by the
magnitude of its current effective weight — what the learned mask lets through.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from .base import Criterion, register


class TrainableMask(nn.Module):
    """A parametrization ``w ↦ w_eff`` whose mask is learned during training."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def keep_mask(self, w: torch.Tensor) -> torch.Tensor:
        """Boolean mask of ``w``'s shape: the entries the learned mask keeps now."""
        raise NotImplementedError

    def bake(self, w: torch.Tensor) -> torch.Tensor:
        """The weight to store once the mask is fixed (e.g. gate values folded in)."""
        return w

    def regularizer(self) -> torch.Tensor | float:
        """Term added to the training loss (0 if none)."""
        return 0.0

    @torch.no_grad()
    def after_step(self) -> None:
        """Projection or reset after each optimizer step."""


class DuringTraining(Criterion):
    """Base of the during-training criteria: scores are |effective weight|."""

    accepts: ClassVar[tuple[str, ...]] = ()  # pattern names the method applies to

    def score(self, view: torch.Tensor) -> torch.Tensor:
        return view.abs()

    def parametrization(self, shape: tuple[int, ...], pattern: dict[str, Any],
                        group_ids: torch.Tensor, n_groups: int) -> TrainableMask:
        """The trainable mask for a weight of ``shape``; ``group_ids`` ([R, K] long, the
        pattern's groups in the 2-D view) and ``pattern`` (its spec) describe the pattern."""
        raise NotImplementedError


# -- SR-STE -------------------------------------------------------------------------------
def nm_mask(view: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` largest |w| of every run of ``m`` along K ([R, K] → bool [R, K]); a
    last partial run of length L keeps ceil(n·L/m), as the vector pattern does."""
    r, k = view.shape
    a = view.detach().abs()
    mask = torch.zeros(r, k, dtype=torch.bool, device=view.device)
    full = (k // m) * m
    if full:
        runs = a[:, :full].reshape(r, full // m, m)
        top = runs.topk(n, dim=-1).indices
        mask[:, :full] = torch.zeros_like(runs, dtype=torch.bool).scatter_(-1, top, True) \
            .reshape(r, full)
    if full < k:
        q = math.ceil(n * (k - full) / m)
        top = a[:, full:].topk(q, dim=-1).indices
        mask[:, full:] = torch.zeros_like(a[:, full:], dtype=torch.bool).scatter_(-1, top, True)
    return mask


class _SparseRefinedSTE(torch.autograd.Function):
    """Forward ``w ⊙ mask``; backward ``g + λ·(¬mask ⊙ w)``: the gradient of the sparse
    weight passes straight through to every dense weight, and the pruned ones are also
    decayed towards zero (the "sparse-refined" term of SR-STE, eq. 4 of Zhou et al.)."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, mask: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.save_for_backward(w, mask)
        ctx.lam = lam
        return w * mask.to(w.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        w, mask = ctx.saved_tensors
        return grad + ctx.lam * (~mask).to(w.dtype) * w, None, None


class SRSTEMask(TrainableMask):
    """N:M mask recomputed from the current magnitudes at every forward (dense weights kept)."""

    def __init__(self, n: int, m: int, lam: float):
        super().__init__()
        self.n, self.m, self.lam = n, m, lam

    def keep_mask(self, w: torch.Tensor) -> torch.Tensor:
        return nm_mask(w.reshape(w.shape[0], -1), self.n, self.m).reshape(w.shape)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _SparseRefinedSTE.apply(w, self.keep_mask(w), self.lam)

    def extra_repr(self) -> str:
        return f"{self.n}:{self.m}, lambda={self.lam:g}"


@register("sr-ste")
class SRSTE(DuringTraining):
    """SR-STE for N:M; ``lam`` is λ_w of the refine term (2e-4 in the paper)."""

    accepts = ("vector",)

    def __init__(self, lam: float = 2e-4):
        self.lam = float(lam)

    def parametrization(self, shape, pattern, group_ids, n_groups) -> SRSTEMask:
        return SRSTEMask(int(pattern["n"]), int(pattern["m"]), self.lam)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "lam": self.lam}


# -- trainable block gates ----------------------------------------------------------------
class GateMask(TrainableMask):
    """One gate per group (block), initialised at 1 and kept in [0, 1] after each step;
    ``w_eff = w · gate[group]``. A group whose gate is ≤ 0 is pruned; a zero gate still
    gets a gradient, so a block can come back while training goes on (the "dynamic"
    reparameterization). ``regularizer`` is ``lam · Σ gates``, the L1 push towards 0."""

    def __init__(self, group_ids: torch.Tensor, n_groups: int, lam: float):
        super().__init__()
        self.gate = nn.Parameter(torch.ones(n_groups))
        self.register_buffer("ids", group_ids.clone().to(torch.long), persistent=False)
        self.lam = lam

    def _expanded(self, w: torch.Tensor) -> torch.Tensor:
        return self.gate[self.ids].reshape(w.shape).to(w.dtype)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self._expanded(w)

    def keep_mask(self, w: torch.Tensor) -> torch.Tensor:
        return (self.gate > 0)[self.ids].reshape(w.shape)

    def bake(self, w: torch.Tensor) -> torch.Tensor:
        return w * self._expanded(w).detach()

    def regularizer(self) -> torch.Tensor:
        return self.lam * self.gate.sum()

    @torch.no_grad()
    def after_step(self) -> None:
        self.gate.clamp_(0.0, 1.0)

    def extra_repr(self) -> str:
        return f"groups={self.gate.numel()}, lambda={self.lam:g}"


@register("block-gate")
class BlockGate(DuringTraining):
    """Trainable gates per block (Vooturi et al.); also usable per group or channel.

    The kept fraction is very sensitive to ``lam``: every gate shrinks at the L1 rate
    unless the loss resists, and a layer followed by a normalisation cannot tell a common
    scale of its gates, so a slightly larger ``lam`` closes far more blocks. Set it for
    the run's length and learning rate (on digits, 20 epochs at lr 0.05: lam 0.009 kept
    all, 0.0095 about half, 0.01 a quarter).
    """

    accepts = ("block", "group", "channel", "element")

    def __init__(self, lam: float = 1e-4):
        self.lam = float(lam)

    def parametrization(self, shape, pattern, group_ids, n_groups) -> GateMask:
        return GateMask(group_ids, n_groups, self.lam)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "lam": self.lam}


# -- DST trainable thresholds -------------------------------------------------------------
class _LongTailedStep(torch.autograd.Function):
    """Unit step forward; the long-tailed derivative estimator of DST (Liu et al. 2020,
    eq. 6) backward: 2 − 4|x| for |x| ≤ 0.4, 0.4 for 0.4 < |x| ≤ 1, 0 beyond."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        a = x.abs()
        d = torch.where(a <= 0.4, 2 - 4 * a, torch.where(a <= 1.0, 0.4, 0.0))
        return grad * d


class ThresholdMask(TrainableMask):
    """A trainable threshold per layer; group g is kept while ``mean|w|_g > t``.

    ``w_eff = w · step(mean|w|_g − t)``, differentiable in both w and t through the
    long-tailed estimator. ``regularizer`` is the sparsity term ``alpha · exp(−t)``, which
    raises the threshold. As in the DST code, a forward that would keep no more than 1% of
    the groups first resets t to 0, so no layer dies; ``after_step`` keeps t ≥ 0 (a
    negative threshold keeps every group, as 0 does, while exp(−t) would blow up).
    """

    def __init__(self, group_ids: torch.Tensor, n_groups: int, alpha: float):
        super().__init__()
        self.threshold = nn.Parameter(torch.zeros(()))
        ids = group_ids.clone().to(torch.long)
        self.register_buffer("ids", ids, persistent=False)
        sizes = torch.zeros(n_groups).index_add_(0, ids.reshape(-1), torch.ones(ids.numel()))
        self.register_buffer("sizes", sizes, persistent=False)
        self.alpha = alpha

    def _group_gate(self, w: torch.Tensor) -> torch.Tensor:
        a = w.abs().reshape(-1)
        sums = torch.zeros(self.sizes.numel(), dtype=a.dtype, device=a.device) \
            .index_add(0, self.ids.reshape(-1), a)
        score = sums / self.sizes.to(a.dtype)                       # [G] mean |w| per group
        if float((score > self.threshold.detach()).float().mean()) <= 0.01:
            with torch.no_grad():
                self.threshold.zero_()
        return _LongTailedStep.apply(score - self.threshold.to(a.dtype))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self._group_gate(w)[self.ids].reshape(w.shape)

    def keep_mask(self, w: torch.Tensor) -> torch.Tensor:
        return (self._group_gate(w.detach()) > 0)[self.ids].reshape(w.shape)

    def regularizer(self) -> torch.Tensor:
        return self.alpha * torch.exp(-self.threshold)

    @torch.no_grad()
    def after_step(self) -> None:
        self.threshold.clamp_(min=0.0)

    def extra_repr(self) -> str:
        return f"groups={self.sizes.numel()}, alpha={self.alpha:g}"


@register("dst")
class DST(DuringTraining):
    """Dynamic Sparse Training thresholds (Liu et al. 2020) over groups (columns), as the
    characterization paper combines them; also usable per element, block or channel."""

    accepts = ("group", "element", "block", "channel")

    def __init__(self, alpha: float = 1e-4):
        self.alpha = float(alpha)

    def parametrization(self, shape, pattern, group_ids, n_groups) -> ThresholdMask:
        return ThresholdMask(group_ids, n_groups, self.alpha)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "alpha": self.alpha}
