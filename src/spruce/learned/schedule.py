"""Temperature schedules as pure functions of the optimizer step (STYLE: nanoGPT)."""

from __future__ import annotations

TAU_SCHEDULES = ("constant", "exp")


def tau_at(step: int, tau: float, tau_end: float, schedule: str = "constant",
           anneal_steps: int = 1000) -> float:
    """Gumbel-Softmax temperature at ``step``: ``constant`` τ, or ``exp``: τ·(τ_end/τ)^(t/T)
    for t < T = ``anneal_steps``, then τ_end."""
    if schedule == "constant":
        return float(tau)
    if schedule != "exp":
        raise ValueError(f"unknown tau schedule {schedule!r}; valid: {', '.join(TAU_SCHEDULES)}")
    frac = min(1.0, max(0, step) / max(1, anneal_steps))
    return float(tau * (tau_end / tau) ** frac)
