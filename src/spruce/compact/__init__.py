"""Structural compaction: see :func:`compact`. A compacted model saves and loads with
``spruce.save`` / ``spruce.load`` (header kind ``"compacted"``, see :mod:`.io`)."""

from .core import CompactionReport, CompactionRow, compact
from .io import is_compacted, resize_layers

__all__ = ["CompactionReport", "CompactionRow", "compact", "is_compacted", "resize_layers"]
