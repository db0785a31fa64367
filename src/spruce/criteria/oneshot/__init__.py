"""One-shot criteria from calibration inputs: Wanda, SparseGPT, and the least-squares
reconstruction of kept weights under any masks."""

from .base import OneShot
from .reconstruct import reconstruct, reconstruct_layers
from .sparsegpt import SparseGPT, obs_sweep
from .wanda import Wanda, wanda_scores

__all__ = ["OneShot", "SparseGPT", "Wanda", "obs_sweep", "reconstruct", "reconstruct_layers",
           "wanda_scores"]
