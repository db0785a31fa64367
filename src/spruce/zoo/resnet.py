"""ResNet-18 / 34 / 50 (He et al., 2015).

ImageNet variant: identical to torchvision (module names, ResNet v1.5 stride on
the 3x3 conv of Bottleneck, kaiming init), so parameter names match
``torchvision.models.resnet*`` state dicts one to one:

    conv1 7x7/2 -> bn1 -> relu -> maxpool 3x3/2 -> layer1..4 -> avgpool -> fc

CIFAR-10 / Tiny-ImageNet variant (the standard "CIFAR ResNet"): conv1 is 3x3
stride 1 padding 1 and there is no max-pool (``maxpool`` is an ``nn.Identity``
so the module tree keeps the same names); everything else is unchanged.

Widths (defaults: torchvision's) can be set per stage, e.g. to build the architecture a
structured pruning would leave: ``stem_width`` (conv1's output channels), ``widths`` (the
inner width of the blocks of each stage: a BasicBlock's conv1, a Bottleneck's conv1 and
conv2) and ``out_widths`` (each stage's output channels, the residual stream; default
``widths[i] * expansion``). ``build("resnet18", widths=(32, 64, 128, 256), stem_width=32)``
is ResNet-18 at half its channels everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import SpruceError
from .registry import Dataset, register

DEFAULT_WIDTHS = (64, 128, 256, 512)  # inner width of each stage's blocks (torchvision)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """3x3 -> 3x3 residual block (ResNet-18/34). out channels = out_ch (default planes)."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, out_ch: int | None = None):
        super().__init__()
        out_ch = planes * self.expansion if out_ch is None else out_ch
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = downsample  # matches the shortcut to [B, out_ch, H/s, W/s]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))   # [B, planes, H/s, W/s]
        out = self.bn2(self.conv2(out))            # [B, out_ch, H/s, W/s]
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (strided) -> 1x1 expand (ResNet-50). out = out_ch (default
    4 * planes)."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, out_ch: int | None = None):
        super().__init__()
        out_ch = planes * self.expansion if out_ch is None else out_ch
        self.conv1 = conv1x1(in_ch, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_ch)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))   # [B, planes, H, W]
        out = self.relu(self.bn2(self.conv2(out))) # [B, planes, H/s, W/s]
        out = self.bn3(self.conv3(out))            # [B, out_ch, H/s, W/s]
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int],
                 num_classes: int, small_input: bool = False,
                 zero_init_residual: bool = False, stem_width: int = 64,
                 widths: Sequence[int] = DEFAULT_WIDTHS,
                 out_widths: Sequence[int] | None = None):
        super().__init__()
        out_widths = _check_widths(block, stem_width, widths, out_widths)
        self.in_ch = stem_width
        if small_input:  # CIFAR stem: keep full resolution
            self.conv1 = nn.Conv2d(3, stem_width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:            # ImageNet stem: /4
            self.conv1 = nn.Conv2d(3, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, widths[0], layers[0], out_ch=out_widths[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], 2, out_widths[1])
        self.layer3 = self._make_layer(block, widths[2], layers[2], 2, out_widths[2])
        self.layer4 = self._make_layer(block, widths[3], layers[3], 2, out_widths[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(out_widths[3], num_classes)

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
                    blocks: int, stride: int = 1, out_ch: int | None = None) -> nn.Sequential:
        out_ch = planes * block.expansion if out_ch is None else out_ch
        downsample = None
        if stride != 1 or self.in_ch != out_ch:  # shortcut must change shape
            downsample = nn.Sequential(conv1x1(self.in_ch, out_ch, stride),
                                       nn.BatchNorm2d(out_ch))
        layers = [block(self.in_ch, planes, stride, downsample, out_ch)]
        self.in_ch = out_ch
        layers += [block(self.in_ch, planes, out_ch=out_ch) for _ in range(1, blocks)]
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


def _check_widths(block: type[BasicBlock | Bottleneck], stem_width: int,
                  widths: Sequence[int], out_widths: Sequence[int] | None) -> tuple[int, ...]:
    """The stage output widths (default ``widths[i] * expansion``), after checking all."""
    out_widths = tuple(w * block.expansion for w in widths) if out_widths is None \
        else tuple(out_widths)
    for field, value in (("widths", tuple(widths)), ("out_widths", out_widths)):
        if len(value) != 4 or not all(isinstance(w, int) and w >= 1 for w in value):
            raise SpruceError(f"a ResNet needs 4 positive integer widths, one per stage; "
                              f"got {value!r}", path="zoo/resnet.py", field=field)
    if not (isinstance(stem_width, int) and stem_width >= 1):
        raise SpruceError(f"needs a positive integer; got {stem_width!r}",
                          path="zoo/resnet.py", field="stem_width")
    return out_widths


def _build(block, layers, ds: Dataset, num_classes: int, zero_init_residual: bool = False,
           stem_width: int = 64, widths: Sequence[int] = DEFAULT_WIDTHS,
           out_widths: Sequence[int] | None = None) -> ResNet:
    return ResNet(block, layers, num_classes, small_input=ds.image_size < 224,
                  zero_init_residual=zero_init_residual, stem_width=stem_width,
                  widths=widths, out_widths=out_widths)


@register("resnet18")
def resnet18(ds: Dataset, num_classes: int, **kwargs) -> ResNet:
    return _build(BasicBlock, [2, 2, 2, 2], ds, num_classes, **kwargs)


@register("resnet34")
def resnet34(ds: Dataset, num_classes: int, **kwargs) -> ResNet:
    return _build(BasicBlock, [3, 4, 6, 3], ds, num_classes, **kwargs)


@register("resnet50")
def resnet50(ds: Dataset, num_classes: int, **kwargs) -> ResNet:
    return _build(Bottleneck, [3, 4, 6, 3], ds, num_classes, **kwargs)
