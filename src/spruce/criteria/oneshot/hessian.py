"""The damped input Hessian of one layer and the factors SparseGPT sweeps with."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...calibrate import InputStats
from ...errors import SpruceError

SINGULAR = 1e-9  # a Cholesky pivot below this fraction of its diagonal entry: singular


@dataclass
class Factors:
    """``H + λI`` (λ = damp · mean diag; dead columns get a unit diagonal) and the upper
    Cholesky factor ``U`` of its inverse (``U[i, i:]`` are the OBS update rows)."""

    h: torch.Tensor  # [K, K] fp64, damped
    u: torch.Tensor  # [K, K] fp32, upper: (H + λI)⁻¹ = Uᵀ U
    dead: torch.Tensor  # [K] bool: columns no calibration row touches


def damped(stats: InputStats, damp: float, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if stats.gram is None:
        raise RuntimeError("input Gram matrix was not collected")
    h = stats.gram.double()
    diag = h.diagonal()
    dead = diag == 0
    diag[dead] = 1.0
    diag.add_(damp * float(diag.mean()))
    return h, dead


def factors(stats: InputStats, damp: float, name: str) -> Factors:
    """Factor the damped Hessian; a singular one (zero damping on rank-deficient or
    collinear inputs) is a :class:`SpruceError` naming the layer and the fix."""
    h, dead = damped(stats, damp, name)
    chol, info = torch.linalg.cholesky_ex(h)
    pivots = chol.diagonal().square() / h.diagonal()
    if int(info) != 0 or not bool(torch.isfinite(chol).all()) or float(pivots.min()) < SINGULAR:
        worst = float(pivots.nan_to_num(0.0).min()) if int(info) == 0 else 0.0
        raise SpruceError(
            f"the input Hessian ({h.shape[0]}x{h.shape[0]}, {stats.rows} calibration rows) is "
            f"singular with damp={damp:g} (smallest relative Cholesky pivot {worst:.3g}): its "
            "inputs are rank-deficient or collinear; use damp > 0 (default 0.01 of the mean "
            "diagonal) or more calibration data", layer=name)
    u = torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True)
    if not bool(torch.isfinite(u).all()):
        raise SpruceError(f"the inverse input Hessian is not finite with damp={damp:g}; use "
                          "a larger damp (default 0.01)", layer=name)
    return Factors(h, u.float(), dead)


def least_squares(w: torch.Tensor, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The weights ``Ŵ`` on the kept columns ``S`` minimising ‖W X − Ŵ_S X_S‖ (every row
    keeps the same columns): ``Ŵ_S = W H[:, S] H[S, S]⁻¹``; zero elsewhere."""
    s = keep.nonzero().squeeze(1).to(h.device)
    w64 = w.double()
    rhs = (w64 @ h[:, s]).T  # (|S|, R)
    sol = torch.cholesky_solve(rhs, torch.linalg.cholesky(h[s][:, s]))
    out = torch.zeros_like(w64)
    out[:, s] = sol.T
    return out.to(w.dtype)


def rowwise_least_squares(w: torch.Tensor, h: torch.Tensor, mask: torch.Tensor,
                          budget: int = 1 << 25) -> torch.Tensor:
    """Exact least squares per row under any mask: row r keeps ``S_r`` and gets
    ``W_r H[:, S_r] H[S_r, S_r]⁻¹``. Rows are solved in chunks of at most ``budget``
    Hessian entries (rows keeping fewer columns are padded with an identity block)."""
    r, k = w.shape
    counts = mask.sum(1)
    width = max(1, int(counts.max()))
    wh = w.double() @ h  # (R, K): the right-hand sides, W H
    out = torch.zeros(r, k, dtype=torch.float64, device=w.device)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]  # kept first
    valid = torch.arange(width, device=w.device)[None, :] < counts[:, None]
    step = max(1, budget // (width * width))
    eye = torch.eye(width, dtype=torch.float64, device=w.device)
    for a in range(0, r, step):
        idx, ok = order[a:a + step], valid[a:a + step]
        hs = h[idx[:, :, None], idx[:, None, :]]  # (B, s, s)
        both = ok[:, :, None] & ok[:, None, :]
        hs = torch.where(both, hs, eye)
        rhs = torch.where(ok, torch.gather(wh[a:a + step], 1, idx), 0.0)
        sol = torch.cholesky_solve(rhs[:, :, None], torch.linalg.cholesky(hs))[:, :, 0]
        out[a:a + step].scatter_(1, idx, torch.where(ok, sol, 0.0))
    return out.to(w.dtype)


def dense_target(w: torch.Tensor, stats: InputStats, damp: float, name: str) -> torch.Tensor:
    """The weights that best map the pruned model's inputs to the dense model's outputs,
    pulled towards ``W`` by the damping: ``Ŵ₀ = W (C + λI) (Ĥ + λI)⁻¹`` with ``C = Σ x xᵀ̂``
    (dense × pruned inputs). ``‖W X − Ŵ X̂‖² = ‖(Ŵ₀ − Ŵ) X̂‖² + const``, so every solver
    that fits ``Ŵ₀`` under ``Ĥ`` fits the dense outputs. Equals ``W`` when ``X̂ = X``."""
    if stats.cross is None:
        return w
    h, _ = damped(stats, damp, name)
    c = stats.cross.double() + (h - stats.gram.double())  # the same diagonal additions
    sol = torch.cholesky_solve(c.T @ w.double().T, torch.linalg.cholesky(h))
    return sol.T.to(w.dtype)
