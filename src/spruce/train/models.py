"""The demo model for CPU training runs and tests, and how a run resolves its model.

``TinyCNN`` is small enough to train on digits on two CPU cores in seconds (≈41k
parameters at the default width): three 3×3 conv → GroupNorm → ReLU → 2×2 max-pool
stages, a 2×2 adaptive average pool, then two Linear layers. GroupNorm rather than
BatchNorm normalises each sample on its own, so data-parallel training over W processes
computes exactly what one process does on the whole batch. Every conv and Linear is
prunable by every pattern (views: 16×27, 32×144, 64×288, 64×256, classes×64).
"""

from __future__ import annotations


import torch
from torch import nn

from .. import zoo


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                         nn.GroupNorm(4, c_out), nn.ReLU(inplace=True), nn.MaxPool2d(2))


class TinyCNN(nn.Module):
    """[B, C, S, S] images (S ≥ 8) → [B, num_classes] logits."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(_stage(in_channels, width), _stage(width, 2 * width),
                                      _stage(2 * width, 4 * width))
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(4 * width * 4, 64)
        self.fc = nn.Linear(64, num_classes)  # the classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)   # [B, 4·width·4]
        return self.fc(torch.relu(self.fc1(x)))      # [B, num_classes]


DEMO_MODELS = {"tiny_cnn": TinyCNN}


def build_model(name: str, num_classes: int, zoo_dataset: str, seed: int) -> nn.Module:
    """``tiny_cnn``, a zoo name (built for ``zoo_dataset``'s geometry with
    ``num_classes``) or ``FILE.py:FN``; initialised reproducibly from ``seed``."""
    if name in DEMO_MODELS:
        with torch.random.fork_rng(devices=[]):  # built on the CPU: leave CUDA RNGs alone
            torch.manual_seed(seed)
            return DEMO_MODELS[name](num_classes=num_classes)
    if ":" in name and name.split(":", 1)[0].endswith(".py"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return zoo.from_file(name)
    if name not in zoo.names():
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(DEMO_MODELS)}, "
                         f"{', '.join(zoo.names())}, or FILE.py:FUNCTION")
    return zoo.build(name, zoo_dataset, seed=seed, num_classes=num_classes)


