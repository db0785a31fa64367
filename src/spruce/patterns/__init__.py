"""Five sparsity patterns over the 2-D weight view, in a registry."""

from . import block, channel, element, group, structured, vector  # noqa: F401  (registry)
from .base import Pattern, get_pattern, kept_count, names, register, top_groups

__all__ = ["Pattern", "get_pattern", "kept_count", "names", "register", "top_groups"]
