"""spruce — pattern-aware pruning and sparse inference that is actually fast.

    import spruce
    report = spruce.prune(model, pattern="group", density=0.5, criterion="magnitude")
    spruce.save(model, "pruned.safetensors"); spruce.load("pruned.safetensors", model)
"""

__version__ = "0.1.0"

from . import zoo  # noqa: E402
from .backends import convert  # noqa: E402
from .api import load, save  # noqa: E402
from .masks import bake, get_mask, masked_layers  # noqa: E402
from .prune import PruneReport, density_of, prune  # noqa: E402

__all__ = ["PruneReport", "__version__", "bake", "convert", "density_of", "get_mask", "load",
           "masked_layers", "prune", "save", "zoo"]
