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
