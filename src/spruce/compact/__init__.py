"""Structural compaction: see :func:`compact`; files with :func:`save_compacted` /
:func:`load_compacted` (header format ``"compacted"``)."""

from .core import CompactionReport, CompactionRow, compact
from .io import is_compacted, load_compacted, resize_layers, save_compacted

__all__ = ["CompactionReport", "CompactionRow", "compact", "is_compacted", "load_compacted",
           "resize_layers", "save_compacted"]
