"""SparseGPT (Frantar & Alistarh 2023): masks chosen by OBS saliency while the kept weights
absorb the error, from each layer's input Hessian ``H = Σ x xᵀ`` (damped).

Per pattern (solvers below):

- ``element``, N:M, ``block``: the blocked OBS sweep over columns (``blocksize`` at a time):
  the mask of the next columns is chosen from the *updated* weights by ``|w| / [U]_jj``
  (``U`` the upper Cholesky factor of ``H⁻¹``; its square is SparseGPT's ``w² / U_jj²``)
  — every run of M for N:M (the paper's N:M variant), every ``blocksize`` columns for
  element and block, whose kept counts are spread over the column blocks so that the layer
  keeps exactly the pattern's count — and each pruned weight's error is pushed onto the
  columns after it.
- ``group`` (whole input columns): greedy OBS column removal with the full inverse Hessian
  (the columns of least ``Σ_r w_rj² / [H⁻¹]_jj`` go, the rest are updated and ``H⁻¹``
  downdated, in ``column_rounds`` rounds, default 32; one unit a round is the exact greedy
  order), then the exact least-squares weights of the kept columns,
  ``Ŵ_S = W H[:, S] H[S, S]⁻¹`` — the FLAP/OBS column reconstruction.
- ``channel`` (whole output rows): rows are ranked by the output energy they carry,
  ``w_r H w_rᵀ`` (exactly what removing the row costs); nothing in the layer can take over
  a removed output, so its weights are unchanged (its consumers see the zeros through the
  sequential pass). Under ``scope="coupled"`` units are ranked by Wanda scores on the dense
  inputs, and the consumers' columns, masked with them, are reconstructed by least squares
  to the dense model's outputs after the coupled masks are attached.

``damp`` (default 0.01 of the mean diagonal) damps ``H``; ``blocksize`` (default 128) is the
sweep's block of columns; ``targets="dense"`` fits each layer to the dense model's outputs
instead of its own (see ``TARGETS``).
"""

from __future__ import annotations

import math

import torch

from ...calibrate import InputStats
from ...errors import SpruceError
from ...patterns import Pattern
from ...patterns.base import kept_count, top_groups
from ..base import register
from .base import OneShot, round_half_up
from .wanda import wanda_scores
from .hessian import damped, factors, least_squares


def obs_sweep(w: torch.Tensor, u: torch.Tensor, select, step: int, blocksize: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocked OBS sweep. ``select(a, b, w_window, d_window) -> keep [R, b - a]`` is
    called every ``step`` columns on the current weights; returns (mask, new weights)."""
    r, k = w.shape
    wt = w.T.contiguous()  # (K, R): a column of w is a contiguous row here
    mask = torch.zeros(k, r, dtype=torch.bool, device=w.device)
    for i1 in range(0, k, blocksize):
        i2 = min(i1 + blocksize, k)
        w1, u1 = wt[i1:i2], u[i1:i2, i1:i2]  # w1 is updated in place
        d = u1.diagonal()
        err1 = torch.empty_like(w1)
        keep1 = mask[i1:i2]
        for i in range(i2 - i1):
            if i % step == 0:
                j = min(i + step, i2 - i1)
                keep1[i:j] = select(i1 + i, i1 + j, w1[i:j].T, d[i:j]).T
            err = err1[i]
            torch.mul(w1[i], ~keep1[i], out=err).div_(d[i])  # (w − q) / d
            w1[i:].addr_(u1[i, i:], err, alpha=-1)  # w1[i] becomes q
        wt[i2:].addmm_(u[i1:i2, i2:].T, err1, alpha=-1)
    return mask.T.contiguous(), wt.T.contiguous()


def _window_step(pattern: Pattern, blocksize: int) -> tuple[int, int]:
    """(selection step, sweep block size) aligned to the pattern's runs or tiles."""
    if pattern.name == "vector":
        m = pattern.m
        return m, max(m, blocksize // m * m)
    unit = pattern.block[1] if pattern.name == "block" else 1
    size = max(unit, blocksize // unit * unit)
    return size, size


def _allocated(pattern: Pattern, shape: tuple[int, int], density: float):
    """For element/block: kept groups in columns [a, b), spread so the layer keeps exactly
    ``kept_count(density, groups)`` (cumulative rounding over column units)."""
    r, k = shape
    unit = pattern.block[1] if pattern.name == "block" else 1
    ids, n_groups = pattern.group_ids(shape)
    total = kept_count(density, n_groups)
    units = math.ceil(k / unit)

    def count(a: int, b: int) -> int:
        ua, ub = a // unit, math.ceil(b / unit)
        return round_half_up(total * ub / units) - round_half_up(total * ua / units)
    return count


def _sweep_solver(name, view, stats, pattern, density, alive, crit):
    f = factors(stats, crit.damp, name)
    w = view.clone()
    w[:, f.dead] = 0
    step, block = _window_step(pattern, crit.blocksize)
    count = None if pattern.name == "vector" else _allocated(pattern, tuple(w.shape), density)

    def select(a, b, w_win, d_win):
        scores = (w_win.abs() / d_win[None, :]).cpu()  # squared: the OBS saliency
        live = None if alive is None else alive[:, a:b].cpu()
        if pattern.name == "vector":
            keep = pattern.compute_mask(scores, None, live)
        else:
            g, _, ids = pattern.group_scores(scores, live)
            keep = pattern.expand(top_groups(g, count(a, b)), ids)
            keep = keep if live is None else keep & live
        return keep.to(w_win.device)
    mask, new = obs_sweep(w, f.u, select, step, block)
    return mask, new


def _group_solver(name, view, stats, pattern, density, alive, crit):
    h = factors(stats, crit.damp, name).h  # checked: the damped Hessian is usable
    taps = getattr(pattern, "taps", 1)
    r, k = view.shape
    n_units = k // taps
    col_alive = torch.ones(k, dtype=torch.bool, device=view.device) if alive is None \
        else alive.any(0)
    unit_alive = col_alive.reshape(n_units, taps).any(1)
    keep_units = min(kept_count(density, n_units), int(unit_alive.sum()))
    removed = ~unit_alive
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    w = view.double().clone()
    idx = torch.arange(k, device=view.device).reshape(n_units, taps)
    for u in (~unit_alive).nonzero().squeeze(1).tolist():
        w, hinv = _remove(w, hinv, idx[u])
    excess = int(unit_alive.sum()) - keep_units
    chunk = max(1, math.ceil(excess / crit.column_rounds))
    while excess > 0:
        live = (~removed).nonzero().squeeze(1)
        n = min(chunk, excess)
        order = torch.argsort(_saliency(w, hinv, idx[live]), stable=True)[:n]
        units = live[order]
        removed[units] = True
        w, hinv = _remove(w, hinv, idx[units].reshape(-1))
        excess -= n
    keep_cols = (~removed)[:, None].expand(n_units, taps).reshape(k)
    new = least_squares(view, h, keep_cols)
    mask = keep_cols[None, :].expand(r, k).clone()
    return (mask if alive is None else mask & alive), new


def _saliency(w: torch.Tensor, hinv: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """OBS cost of removing each unit (its columns ``units[u]``): ``tr(W_S [H⁻¹]_SS⁻¹ W_Sᵀ)``."""
    if units.shape[1] == 1:
        cols = units[:, 0]
        return w[:, cols].square().sum(0) / hinv.diagonal()[cols]
    blocks = torch.linalg.inv(hinv[units[:, :, None], units[:, None, :]])  # (U, t, t)
    wb = w[:, units]  # (R, U, t)
    return torch.einsum("rut,uts,rus->u", wb, blocks, wb)


def _remove(w: torch.Tensor, hinv: torch.Tensor, cols: torch.Tensor):
    """OBS removal of the columns ``cols``: the rest absorb their contribution."""
    inv = torch.linalg.inv(hinv[cols][:, cols])
    w = w - (w[:, cols] @ inv) @ hinv[cols, :]
    hinv = hinv - hinv[:, cols] @ inv @ hinv[cols, :]
    return w, hinv


def _channel_solver(name, view, stats, pattern, density, alive, crit):
    h, _ = damped(stats, crit.damp, name)
    w = view.double()
    energy = ((w @ h) * w).sum(1)  # w_r H w_rᵀ: the output energy of row r
    rows_alive = None if alive is None else alive.any(1)
    if rows_alive is not None:
        energy = energy.masked_fill(~rows_alive, -math.inf)
    keep = top_groups(energy.cpu(), kept_count(density, view.shape[0])).to(view.device)
    mask = keep[:, None].expand_as(view).clone()
    return (mask if alive is None else mask & alive), None


# What each layer's kept weights are fitted to: "pruned" (the paper) its own outputs on the
# inputs it now gets; "dense" the dense model's outputs (a copy of the model runs beside it,
# twice the weights' memory), which also corrects the error of the layers before it.
TARGETS = ("pruned", "dense")


@register("sparsegpt")
class SparseGPT(OneShot):
    """SparseGPT per pattern (see the module docstring); changes the kept weights."""

    solvers = {"element": _sweep_solver, "vector": _sweep_solver, "block": _sweep_solver,
               "group": _group_solver, "channel": _channel_solver}
    needs_gram = True
    changes_weights = True

    def __init__(self, calibration=None, damp: float = 0.01, blocksize: int = 128,
                 column_rounds: int = 32, targets: str = "pruned"):
        super().__init__(calibration, damp, blocksize)
        if targets not in TARGETS:
            raise SpruceError(f"targets must be one of {', '.join(TARGETS)}; got {targets!r}",
                              field="targets")
        self.targets = targets
        if isinstance(column_rounds, bool) or not isinstance(column_rounds, int) \
                or column_rounds < 1:
            raise SpruceError(f"column_rounds must be a positive integer (default 32); got "
                              f"{column_rounds!r}", field="column_rounds")
        self.column_rounds = column_rounds

    def spec(self):
        return {**super().spec(), "column_rounds": self.column_rounds, "targets": self.targets}

    def entry_scores(self, name: str, view: torch.Tensor, stats: InputStats) -> torch.Tensor:
        """Coupled units span output rows of some layers and input columns of others; the
        per-column OBS saliency does not price a row, so units are ranked by Wanda's
        ``|w|·‖X_j‖`` on the dense inputs, and :meth:`finish` refits the consumers."""
        return wanda_scores(view, stats)

    def finish(self, model, layers):
        """Coupled masks: the consumers are fitted to the *dense* outputs whatever
        ``targets`` says — in the pruned model their removed inputs are dead channels, so
        their own outputs hold nothing of what those channels carried."""
        from .reconstruct import reconstruct_layers
        return reconstruct_layers(model, layers, self.calibration, self.damp, self.blocksize,
                                  targets="dense")

