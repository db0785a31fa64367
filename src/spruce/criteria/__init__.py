"""Importance criteria: a score per weight entry, in the 2-D view."""

from . import during_training, simple, taylor  # noqa: F401  (fill the registry)
from .base import Criterion, get_criterion, names, register
from .simple import Lamp, Magnitude, Random, lamp_scores
from .taylor import Taylor

__all__ = ["Criterion", "Lamp", "Magnitude", "Random", "Taylor", "get_criterion",
           "lamp_scores", "names", "register"]
