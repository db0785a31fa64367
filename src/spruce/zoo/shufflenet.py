"""ShuffleNet V2 (Ma et al., 2018), widths x0.5 / x1.0 / x1.5 / x2.0.

ImageNet variant: identical to torchvision's ``shufflenet_v2_x{width}`` (same
module names, PyTorch default init):

    conv1 3x3/2 -> maxpool 3x3/2 -> stage2 -> stage3 -> stage4 -> conv5 1x1
    -> global mean -> fc

CIFAR-10 / Tiny-ImageNet variant: the first conv has stride 1 and there is no
max-pool (``maxpool`` is ``nn.Identity``), so a 32x32 image reaches the head at
4x4 instead of vanishing. The depthwise 3x3 convs (``groups == channels``) are
ordinary ``nn.Conv2d`` modules.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import Dataset, register

# width multiplier -> output channels of [conv1, stage2, stage3, stage4, conv5]
STAGE_OUT_CHANNELS: dict[float, list[int]] = {
    0.5: [24, 48, 96, 192, 1024],
    1.0: [24, 116, 232, 464, 1024],
    1.5: [24, 176, 352, 704, 1024],
    2.0: [24, 244, 488, 976, 2048],
}
STAGE_REPEATS = [4, 8, 4]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, g*c, H, W] -> [B, c*g, H, W]: interleave the channels of the g groups."""
    b, ch, h, w = x.shape
    x = x.view(b, groups, ch // groups, h, w).transpose(1, 2).contiguous()
    return x.view(b, ch, h, w)


def depthwise_conv(ch: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(ch, ch, kernel_size=3, stride=stride, padding=1, bias=False, groups=ch)


class InvertedResidual(nn.Module):
    """stride 1: split channels in half, transform one half (branch2), concat, shuffle.
    stride 2: both branches see the full input and each halves H, W; concat doubles C."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.stride = stride
        mid = out_ch // 2  # channels produced by each branch
        if stride > 1:
            self.branch1 = nn.Sequential(
                depthwise_conv(in_ch, stride), nn.BatchNorm2d(in_ch),
                nn.Conv2d(in_ch, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            )
        else:
            assert in_ch == 2 * mid, "stride-1 block needs in_ch == out_ch"
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(in_ch if stride > 1 else mid, mid, 1, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            depthwise_conv(mid, stride), nn.BatchNorm2d(mid),
            nn.Conv2d(mid, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)                            # 2 x [B, C/2, H, W]
            out = torch.cat((x1, self.branch2(x2)), dim=1)        # [B, C, H, W]
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)  # [B, out, H/2, W/2]
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 1000,
                 small_input: bool = False):
        super().__init__()
        if width not in STAGE_OUT_CHANNELS:
            raise ValueError(f"width must be one of {sorted(STAGE_OUT_CHANNELS)}, got {width}")
        c0, c2, c3, c4, c5 = STAGE_OUT_CHANNELS[width]

        self.conv1 = nn.Sequential(
            nn.Conv2d(3, c0, 3, stride=1 if small_input else 2, padding=1, bias=False),
            nn.BatchNorm2d(c0), nn.ReLU(inplace=True),
        )
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, stride=2, padding=1)

        in_ch = c0
        stages = zip(("stage2", "stage3", "stage4"), STAGE_REPEATS, (c2, c3, c4), strict=True)
        for name, reps, out_ch in stages:
            blocks = [InvertedResidual(in_ch, out_ch, 2)]  # first block halves H, W
            blocks += [InvertedResidual(out_ch, out_ch, 1) for _ in range(reps - 1)]
            setattr(self, name, nn.Sequential(*blocks))
            in_ch = out_ch

        self.conv5 = nn.Sequential(
            nn.Conv2d(in_ch, c5, 1, bias=False), nn.BatchNorm2d(c5), nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(c5, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # shapes for ImageNet [B, 3, 224, 224], width 1.0; CIFAR skips the two /2 in the stem
        x = self.conv1(x)       # [B, 24, 112, 112]
        x = self.maxpool(x)     # [B, 24, 56, 56]
        x = self.stage2(x)      # [B, 116, 28, 28]
        x = self.stage3(x)      # [B, 232, 14, 14]
        x = self.stage4(x)      # [B, 464, 7, 7]
        x = self.conv5(x)       # [B, 1024, 7, 7]
        x = x.mean([2, 3])      # [B, 1024]
        return self.fc(x)       # [B, classes]


@register("shufflenet_v2")
def shufflenet_v2(ds: Dataset, num_classes: int, width: float = 1.0) -> ShuffleNetV2:
    return ShuffleNetV2(width, num_classes, small_input=ds.image_size < 224)
