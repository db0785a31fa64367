"""Learned N:M masks over frozen weights: a Gumbel-Softmax choice among the C(M, N)
patterns of every run of M weights (Danhofer 2024, §III).

Every run of M consecutive entries along K of the 2-D view (DESIGN.md §1) has one logit per
N:M pattern — six for 2:4. A training forward draws ``y = softmax((logits + g) / τ)``
(eq. 2, ``g ~ Gumbel(0, 1)``) and multiplies the soft mask ``y @ table`` into the frozen
weight (eq. 5); only the logits train. ``hard=True`` is the straight-through variant: the
forward uses the one-hot ``argmax`` choice and the backward the soft one. In eval mode the
mask is the hard ``argmax`` with no noise — exactly what :func:`harden` will keep.

:class:`LearnedNMMask` is a :class:`~spruce.criteria.during_training.TrainableMask`, so the
training loop's ``prune_mode="during"`` attaches, steps and finalizes it like SR-STE;
:func:`attach_learned` / :func:`harden` do the same outside the loop.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..criteria.base import register
from ..criteria.during_training import DuringTraining, TrainableMask
from ..masks import attach, mask_module, original_weight
from ..view import prunable_layers, to_view, view_shape
from .schedule import TAU_SCHEDULES, tau_at

INITS = ("magnitude", "random", "wanda", "sparsegpt")
ONE_SHOT_INITS = ("wanda", "sparsegpt")  # need calibration data: attach_learned(calibration=)
MAX_PATTERNS = 70  # C(8, 4): beyond this the logits outgrow the weights many times over


def nm_table(n: int, m: int) -> torch.Tensor:
    """The C(m, n) N:M patterns as a [P, m] 0/1 float table, in lexicographic order of the
    kept positions (2:4: {0,1}, {0,2}, {0,3}, {1,2}, {1,3}, {2,3})."""
    if not 1 <= n <= m:
        raise ValueError(f"N:M needs 1 <= N <= M; got {n}:{m}")
    if math.comb(m, n) > MAX_PATTERNS:
        raise ValueError(f"learned N:M masks keep one logit per pattern; {n}:{m} has "
                         f"{math.comb(m, n)} (at most {MAX_PATTERNS}); use 2:4 or a smaller M")
    rows = [[1.0 if j in kept else 0.0 for j in range(m)]
            for kept in itertools.combinations(range(m), n)]
    return torch.tensor(rows)


@dataclass(frozen=True)
class LearnedSpec:
    """How a learned mask is initialised and sampled (one record shared by every layer)."""

    n: int = 2
    m: int = 4
    init: str = "magnitude"  # magnitude: logits ∝ |w| kept by each pattern | random (paper)
    #                          | wanda / sparsegpt: the one-shot N:M mask wins (calibration)
    init_scale: float = 5.0  # magnitude init: logit gap, in units of the run's total |w|
    init_std: float = 0.01  # random init: std of the N(0, σ²) logits
    tau: float = 1.0  # temperature at step 0 (eq. 2)
    tau_end: float = 0.1  # temperature reached by the anneal (exp schedule)
    tau_schedule: str = "constant"  # constant | exp (τ·(τ_end/τ)^(step/anneal_steps))
    anneal_steps: int = 1000  # steps of the exponential anneal; τ_end after
    hard: bool = False  # straight-through: one-hot forward, soft backward
    seed: int = 0  # random init

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"learned mask init must be one of {', '.join(INITS)}; "
                             f"got {self.init!r}")
        if self.tau_schedule not in TAU_SCHEDULES:
            raise ValueError(f"unknown tau_schedule {self.tau_schedule!r}; valid: "
                             f"{', '.join(TAU_SCHEDULES)}")
        if self.tau <= 0 or self.tau_end <= 0:
            raise ValueError(f"temperatures must be > 0; got tau={self.tau}, "
                             f"tau_end={self.tau_end}")
        nm_table(self.n, self.m)


def init_logits(view: torch.Tensor, table: torch.Tensor, spec: LearnedSpec,
                gen: torch.Generator | None = None) -> torch.Tensor:
    """Logits [R, G, P] for a weight view [R, K] (K = G·M).

    magnitude: ``scale · (|w| kept by pattern p − the best pattern's) / Σ|w| of the run`` —
    the magnitude pattern has the largest logit (argmax = magnitude N:M, ties to the lower
    pattern index) and the gaps are relative to the run's own scale. random: N(0, σ²).
    """
    r, k = view.shape
    runs = view.detach().abs().to(torch.float32).reshape(r, k // spec.m, spec.m)  # (R, G, M)
    if spec.init == "random":
        return torch.randn(runs.shape[:2] + (table.shape[0],), generator=gen) * spec.init_std
    kept = runs @ table.T                                                          # (R, G, P)
    total = runs.sum(-1, keepdim=True).clamp_min(1e-12)
    return spec.init_scale * (kept - kept.amax(-1, keepdim=True)) / total


class LearnedNMMask(TrainableMask):
    """Parametrization ``w ↦ w ⊙ mask(logits)`` for one layer (any weight rank; the mask
    lives on the 2-D view). ``logits`` [R, K/M, P] is the only parameter; ``step`` counts
    optimizer steps (a buffer, so a checkpoint resumes the τ schedule).

    Without ``logits`` a magnitude-initialised mask fills them from the weight it sees at
    its first forward (the trainer creates parametrizations from shapes alone); the
    ``ready`` buffer records that, so a resumed run does not re-initialise.
    """

    def __init__(self, view_shape: tuple[int, int], spec: LearnedSpec,
                 logits: torch.Tensor | None = None):
        super().__init__()
        r, k = view_shape
        self.spec = spec
        table = nm_table(spec.n, spec.m)
        shape = (r, k // spec.m, table.shape[0])
        ready = logits is not None or spec.init == "random"
        if logits is None:
            gen = torch.Generator().manual_seed(spec.seed)
            logits = torch.randn(shape, generator=gen) * spec.init_std \
                if spec.init == "random" else torch.zeros(shape)
        if tuple(logits.shape) != shape:
            raise ValueError(f"logits of shape {tuple(logits.shape)} for a view {view_shape}; "
                             f"expected {shape}")
        self.logits = nn.Parameter(logits.detach().clone().float())
        self.register_buffer("table", table, persistent=False)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("ready", torch.tensor(ready))

    @torch.no_grad()
    def init_from(self, w: torch.Tensor) -> None:
        view = to_view(w).detach().to(self.logits.device)
        self.logits.copy_(init_logits(view, self.table, self.spec))
        self.ready.fill_(True)

    @property
    def tau(self) -> float:
        s = self.spec
        return tau_at(int(self.step), s.tau, s.tau_end, s.tau_schedule, s.anneal_steps)

    def choice(self, sample: bool | None = None) -> torch.Tensor:
        """Pattern weights [R, G, P]: Gumbel-Softmax (training) or one-hot argmax (eval)."""
        sample = self.training if sample is None else sample
        if not sample:
            return F.one_hot(self.logits.argmax(-1), self.table.shape[0]).to(self.logits.dtype)
        return gumbel_softmax(self.logits, self.tau, self.spec.hard)

    def soft_mask(self, sample: bool | None = None) -> torch.Tensor:
        """Mask [R, K] in the 2-D view (entries in [0, 1]; N per run in expectation)."""
        mask = self.choice(sample) @ self.table                                   # (R, G, M)
        return mask.reshape(mask.shape[0], -1)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not bool(self.ready):
            self.init_from(w)
        mask = self.soft_mask().to(w.dtype)
        return w * mask.reshape(w.shape)

    def hard_mask(self) -> torch.Tensor:
        """Boolean [R, K]: the argmax pattern of every run (exact N:M)."""
        if not bool(self.ready):
            raise RuntimeError("learned mask not initialised yet: run one forward first")
        idx = self.logits.detach().argmax(-1)                                      # (R, G)
        return self.table[idx].reshape(idx.shape[0], -1).bool()

    def keep_mask(self, w: torch.Tensor) -> torch.Tensor:
        return self.hard_mask().reshape(w.shape)

    @torch.no_grad()
    def after_step(self) -> None:
        self.step += 1

    def extra_repr(self) -> str:
        s = self.spec
        return (f"{s.n}:{s.m}, runs={self.logits.shape[0] * self.logits.shape[1]}, "
                f"tau={self.tau:.3g} ({s.tau_schedule}), hard={s.hard}, init={s.init}")


def gumbel_softmax(logits: torch.Tensor, tau: float, hard: bool = False) -> torch.Tensor:
    """Eq. 2 over the last dim; ``hard``: one-hot(argmax) forward, soft gradient."""
    u = torch.rand_like(logits).clamp_(1e-10, 1.0 - 1e-7)
    y = torch.softmax((logits - torch.log(-torch.log(u))) / tau, dim=-1)
    if not hard:
        return y
    one_hot = F.one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype)
    return one_hot + y - y.detach()


@register("learned")
class Learned(DuringTraining):
    """``criterion="learned"``: learned N:M masks (Gumbel-Softmax over the patterns).

    Under ``prune_mode="during"`` the trainer attaches one :class:`LearnedNMMask` per layer
    and hardens it at the end. Freeze the weights (``requires_grad_(False)``) to train the
    logits alone, as the paper does. As a plain criterion it scores the entries a learned
    mask on the layer keeps (so ``prune(.., "2:4", criterion="learned")`` reproduces the
    argmax mask exactly), or |w| on a layer without one.
    """

    accepts = ("vector",)

    def __init__(self, **spec: Any):
        self.options = dict(spec)
        LearnedSpec(**self.options)

    def spec_for(self, pattern: dict[str, Any]) -> LearnedSpec:
        return LearnedSpec(**{**self.options, "n": int(pattern["n"]), "m": int(pattern["m"])})

    def parametrization(self, shape, pattern, group_ids, n_groups) -> LearnedNMMask:
        """Called by the trainer with shapes only: magnitude logits fill at the first forward."""
        spec = self.spec_for(pattern)
        if spec.init in ONE_SHOT_INITS:
            raise ValueError(f"learned masks with init={spec.init!r} need calibration data: "
                             "attach them with spruce.learned.attach_learned(model, spec, "
                             "calibration=[batch, ...]) before training")
        view = (int(shape[0]), math.prod(int(d) for d in shape[1:]))
        check_view(view, spec)
        return LearnedNMMask(view, spec)

    def parametrization_for(self, weight: torch.Tensor, pattern: dict[str, Any],
                            scores: torch.Tensor | None = None) -> LearnedNMMask:
        """``scores`` (2-D view, >= 0) replace ``|w|`` in the magnitude-style init."""
        spec = self.spec_for(pattern)
        view = to_view(weight).detach() if scores is None else scores.detach()
        check_view(tuple(view.shape), spec)
        gen = torch.Generator().manual_seed(spec.seed)
        logits = init_logits(view.cpu(), nm_table(spec.n, spec.m), spec, gen)
        return LearnedNMMask(tuple(view.shape), spec, logits)

    def scores(self, model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
        out = {}
        for name, layer in layers.items():
            learned = learned_module(layer)
            w = to_view(original_weight(layer)).detach()
            out[name] = w.abs() if learned is None else \
                learned.hard_mask().to(w.dtype) + 1e-6 * w.abs() / (w.abs().max() + 1e-12)
        return out

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}


def check_view(shape: tuple[int, int], spec: LearnedSpec, name: str = "") -> None:
    r, k = shape
    if k % spec.m:
        where = f"layer '{name}': " if name else ""
        raise ValueError(f"{where}learned {spec.n}:{spec.m} masks need K divisible by "
                         f"{spec.m}; K={k} (exclude the layer or use magnitude N:M, which "
                         "handles a partial last run)")


def learned_module(layer: nn.Module) -> LearnedNMMask | None:
    if not parametrize.is_parametrized(layer, "weight"):
        return None
    return next((p for p in layer.parametrizations.weight if isinstance(p, LearnedNMMask)),
                None)


def attach_learned(model: nn.Module, spec: LearnedSpec | None = None,
                   exclude: tuple[str, ...] = (), freeze: bool = True,
                   calibration: Any = None) -> dict[str, LearnedNMMask]:
    """Put a learned N:M mask on every prunable layer (checked first: an error leaves the
    model untouched). ``freeze``: weights and biases of the whole model stop training, so
    only the logits do. ``init="wanda" | "sparsegpt"`` starts every layer at that one-shot
    criterion's N:M mask, computed from ``calibration`` (batches the model takes); the
    weights stay the dense ones (:func:`spruce.criteria.reconstruct` refits them after
    :func:`harden`)."""
    spec = spec or LearnedSpec()
    layers, _ = prunable_layers(model, exclude)
    for name, layer in layers.items():
        check_view(view_shape(layer), spec, name)
        if learned_module(layer) is not None:
            raise ValueError(f"layer '{name}' already carries a learned mask; harden() it first")
    if freeze:
        model.requires_grad_(False)
    crit = Learned(**{k: v for k, v in spec.__dict__.items() if k not in ("n", "m")})
    pattern = {"name": "vector", "n": spec.n, "m": spec.m}
    scores = one_shot_scores(model, layers, spec, calibration) \
        if spec.init in ONE_SHOT_INITS else {}
    out = {}
    for name, layer in layers.items():
        param = crit.parametrization_for(original_weight(layer), pattern, scores.get(name))
        param.to(original_weight(layer).device)
        parametrize.register_parametrization(layer, "weight", param)
        out[name] = param
    return out


def one_shot_scores(model: nn.Module, layers: dict[str, nn.Module], spec: LearnedSpec,
                    calibration: Any) -> dict[str, torch.Tensor]:
    """Init scores whose best N:M pattern is the one-shot criterion's mask: ``mask +
    10⁻³·|w|/max|w|`` (the weights are left as they were)."""
    from ..criteria import get_criterion
    from ..patterns import get_pattern

    crit = get_criterion(spec.init, calibration=calibration)
    pattern = get_pattern({"name": "vector", "n": spec.n, "m": spec.m})
    done = crit.prune_layers(model, layers, dict.fromkeys(layers, pattern),
                             dict.fromkeys(layers), keep_weights=False)
    out = {}
    for name, layer in layers.items():
        w = to_view(original_weight(layer)).detach().abs().float().cpu()
        out[name] = done.masks[name].float() + 1e-3 * w / w.max().clamp_min(1e-12)
    return out


def learned_layers(model: nn.Module) -> dict[str, LearnedNMMask]:
    return {name: p for name, mod in model.named_modules()
            if (p := learned_module(mod)) is not None}


@torch.no_grad()
def harden(model: nn.Module) -> dict[str, torch.Tensor]:
    """Replace every learned mask by a WeightMask holding its argmax (exact N:M), with
    ``info = {"patterns": [vector n m], "criterion": {"name": "learned", ...}}`` — what
    save/load and every backend (semi24 included) accept. Weights are left as they are.
    Returns the hard masks (2-D views) by layer name."""
    out = {}
    for name, mod in list(model.named_modules()):
        learned = learned_module(mod)
        if learned is None:
            continue
        plist = mod.parametrizations.weight
        keep = learned.hard_mask()
        info = {"patterns": [{"name": "vector", "n": learned.spec.n, "m": learned.spec.m,
                              "reduce": "sumsq"}],
                "criterion": {"name": "learned", "init": learned.spec.init,
                              "steps": int(learned.step)},
                "scope": "learned", "target": learned.spec.n / learned.spec.m}
        if len(plist) == 1:  # the learned mask is the only parametrization
            parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)
        else:
            del plist[[i for i, p in enumerate(plist) if p is learned][0]]
        attach(mod, keep, info)
        out[name] = keep
    return out


def has_mask(layer: nn.Module) -> bool:
    return mask_module(layer) is not None or learned_module(layer) is not None
