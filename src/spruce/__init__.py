"""spruce — pattern-aware pruning and sparse inference that is actually fast.

    import spruce
    report = spruce.prune(model, pattern="group", density=0.5, criterion="magnitude")
    spruce.save(model, "pruned.safetensors"); spruce.load("pruned.safetensors", model)
"""

__version__ = "0.1.0"

from . import learned  # noqa: F401  (registers the criterion "learned")
from . import zoo
from .api import convert, load, save
from .compact import compact
from .masks import bake, get_mask, masked_layers
from .onnx import export_onnx
from .prune import PruneReport, density_of, prune

__all__ = ["PruneReport", "__version__", "bake", "compact", "convert", "density_of",
           "export_onnx", "get_mask", "load", "masked_layers", "prune", "save", "zoo"]
