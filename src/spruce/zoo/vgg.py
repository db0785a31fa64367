"""VGG-16 / VGG-19 (Simonyan & Zisserman, 2014), optionally with BatchNorm.

ImageNet variant: exactly torchvision's ``vgg16`` / ``vgg19`` (``*_bn`` with
``batch_norm=True``):

    features -> AdaptiveAvgPool2d(7) -> flatten -> 25088 -> 4096 -> 4096 -> classes
    (ReLU + Dropout(0.5) after each hidden Linear)

CIFAR-10 / Tiny-ImageNet variant (the common "CIFAR VGG"): the same conv
``features``, then AdaptiveAvgPool2d(1) and a small classifier

    512 -> 512 -> 512 -> classes   (ReLU between, no dropout)

On CIFAR the features already end at 1x1 (32 / 2^5), so the pool is an identity
and this is the usual "flatten the 1x1 map"; on Tiny-ImageNet it averages the
2x2 map. Initialisation follows torchvision (kaiming conv, N(0, 0.01) linear).
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import Dataset, register

# conv widths per layer; "M" = 2x2 max-pool (each halves H and W)
CFGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
              512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def make_features(cfg: list[int | str], batch_norm: bool) -> nn.Sequential:
    """[B, 3, H, W] -> [B, 512, H/32, W/32]"""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_ch, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        in_ch = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, cfg: list[int | str], num_classes: int,
                 batch_norm: bool = False, small_input: bool = False,
                 dropout: float = 0.5):
        super().__init__()
        self.features = make_features(cfg, batch_norm)
        if small_input:
            self.avgpool = nn.AdaptiveAvgPool2d(1)  # [B, 512, h, w] -> [B, 512, 1, 1]
            self.classifier = nn.Sequential(
                nn.Linear(512, 512), nn.ReLU(inplace=True),
                nn.Linear(512, 512), nn.ReLU(inplace=True),
                nn.Linear(512, num_classes),
            )
        else:
            self.avgpool = nn.AdaptiveAvgPool2d(7)  # [B, 512, 7, 7]
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
                nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
                nn.Linear(4096, num_classes),
            )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)        # [B, 512, H/32, W/32]
        x = self.avgpool(x)         # [B, 512, 7, 7] (ImageNet) or [B, 512, 1, 1]
        x = torch.flatten(x, 1)     # [B, 25088] or [B, 512]
        return self.classifier(x)   # [B, classes]


def _build(name: str, ds: Dataset, num_classes: int, batch_norm: bool = False,
           dropout: float = 0.5) -> VGG:
    small = ds.image_size < 224  # CIFAR / Tiny-ImageNet
    return VGG(CFGS[name], num_classes, batch_norm=batch_norm, small_input=small,
               dropout=dropout)


@register("vgg16")
def vgg16(ds: Dataset, num_classes: int, **kwargs) -> VGG:
    return _build("vgg16", ds, num_classes, **kwargs)


@register("vgg19")
def vgg19(ds: Dataset, num_classes: int, **kwargs) -> VGG:
    return _build("vgg19", ds, num_classes, **kwargs)
