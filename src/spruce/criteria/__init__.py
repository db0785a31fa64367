"""Importance criteria: a score per weight entry, in the 2-D view."""

from . import during_training, oneshot, simple, taylor  # noqa: F401  (fill the registry)
from .base import Criterion, get_criterion, names, register
from .oneshot import OneShot, SparseGPT, Wanda, reconstruct
from .simple import Lamp, Magnitude, Random, lamp_scores
from .taylor import Taylor

__all__ = ["Criterion", "Lamp", "Magnitude", "OneShot", "Random", "SparseGPT", "Taylor", "Wanda",
           "get_criterion", "lamp_scores", "names", "reconstruct", "register"]
