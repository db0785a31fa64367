"""Execution backends: each masked layer becomes the module of its fastest real path."""

from . import bsr, channel, csr, dense, groupwise, groupwise_fused, semi24  # noqa: F401  (fill the registry)
from .base import Backend, available, get_backend, names, register
from .convert import ConversionReport, LayerConversion, convert

__all__ = ["Backend", "ConversionReport", "LayerConversion", "available", "convert",
           "get_backend", "names", "register"]
