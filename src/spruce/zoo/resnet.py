"""ResNet-18 / 34 / 50 (He et al., 2015).

ImageNet variant: identical to torchvision (module names, ResNet v1.5 stride on
the 3x3 conv of Bottleneck, kaiming init), so parameter names match
``torchvision.models.resnet*`` state dicts one to one:

    conv1 7x7/2 -> bn1 -> relu -> maxpool 3x3/2 -> layer1..4 -> avgpool -> fc

CIFAR-10 / Tiny-ImageNet variant (the standard "CIFAR ResNet"): conv1 is 3x3
stride 1 padding 1 and there is no max-pool (``maxpool`` is an ``nn.Identity``
so the module tree keeps the same names); everything else is unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import Dataset, register


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """3x3 -> 3x3 residual block (ResNet-18/34). out channels = planes."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample  # matches the shortcut to [B, planes, H/s, W/s]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))   # [B, planes, H/s, W/s]
        out = self.bn2(self.conv2(out))            # [B, planes, H/s, W/s]
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (strided) -> 1x1 expand (ResNet-50). out = 4 * planes."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(in_ch, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))   # [B, planes, H, W]
        out = self.relu(self.bn2(self.conv2(out))) # [B, planes, H/s, W/s]
        out = self.bn3(self.conv3(out))            # [B, 4*planes, H/s, W/s]
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int],
                 num_classes: int, small_input: bool = False,
                 zero_init_residual: bool = False):
        super().__init__()
        self.in_ch = 64
        if small_input:  # CIFAR stem: keep full resolution
            self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:            # ImageNet stem: /4
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # last BN of each block starts at 0 (block = identity)
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int,
                    blocks: int, stride: int = 1) -> nn.Sequential:
        out_ch = planes * block.expansion
        downsample = None
        if stride != 1 or self.in_ch != out_ch:  # shortcut must change shape
            downsample = nn.Sequential(conv1x1(self.in_ch, out_ch, stride),
                                       nn.BatchNorm2d(out_ch))
        layers = [block(self.in_ch, planes, stride, downsample)]
        self.in_ch = out_ch
        layers += [block(self.in_ch, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # shapes for ImageNet [B, 3, 224, 224]; CIFAR skips the /4 stem (32 -> 32)
        x = self.relu(self.bn1(self.conv1(x)))  # [B, 64, 112, 112]
        x = self.maxpool(x)                     # [B, 64, 56, 56]
        x = self.layer1(x)                      # [B, 64e, 56, 56]   (e = expansion)
        x = self.layer2(x)                      # [B, 128e, 28, 28]
        x = self.layer3(x)                      # [B, 256e, 14, 14]
        x = self.layer4(x)                      # [B, 512e, 7, 7]
        x = torch.flatten(self.avgpool(x), 1)   # [B, 512e]
        return self.fc(x)                       # [B, classes]


def _build(block, layers, ds: Dataset, num_classes: int,
           zero_init_residual: bool = False) -> ResNet:
    return ResNet(block, layers, num_classes, small_input=ds.image_size < 224,
                  zero_init_residual=zero_init_residual)


@register("resnet18")
def resnet18(ds: Dataset, num_classes: int, **kwargs) -> ResNet:
    return _build(BasicBlock, [2, 2, 2, 2], ds, num_classes, **kwargs)


@register("resnet34")
def resnet34(ds: Dataset, num_classes: int, **kwargs) -> ResNet:
    return _build(BasicBlock, [3, 4, 6, 3], ds, num_classes, **kwargs)


@register("resnet50")
def resnet50(ds: Dataset, num_classes: int, **kwargs) -> ResNet:
    return _build(Bottleneck, [3, 4, 6, 3], ds, num_classes, **kwargs)
