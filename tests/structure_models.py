"""Small modules of the families the dependency graph must handle (torchvision-style
MobileNetV2/V3 and ConvNeXt blocks), written in plain PyTorch for the CPU tests."""

import torch
from torch import nn


def randomize_norms(model: nn.Module) -> None:
    """BatchNorm statistics and affine parameters far from the identity (so a wrong channel
    shows in the outputs)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()


class InvertedResidual(nn.Module):
    """MobileNetV2: 1×1 expand → depthwise 3×3 → 1×1 project (+ residual at stride 1),
    with an optional squeeze-excitation (MobileNetV3)."""

    def __init__(self, c_in: int, c_out: int, expand: int, stride: int, se: bool = False,
                 act: type = nn.ReLU6):
        super().__init__()
        mid = c_in * expand
        self.residual = stride == 1 and c_in == c_out
        self.expand = nn.Sequential(nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid),
                                    act())
        self.dw = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
                                nn.BatchNorm2d(mid), act())
        self.se = SqueezeExcite(mid) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.residual else y


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(s))))


class MobileNet(nn.Module):
    def __init__(self, v3: bool = False, classes: int = 10):
        super().__init__()
        act = nn.Hardswish if v3 else nn.ReLU6
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), act())
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 2, 1, se=v3, act=act),
            InvertedResidual(16, 24, 3, 2, se=v3, act=act),
            InvertedResidual(24, 24, 3, 1, se=v3, act=act))
        self.head = nn.Sequential(nn.Conv2d(24, 64, 1, bias=False), nn.BatchNorm2d(64), act())
        self.classifier = nn.Sequential(nn.Linear(64, 32), act(), nn.Linear(32, classes))

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class ConvNeXtBlock(nn.Module):
    """Depthwise 7×7 → LayerNorm (channels last) → Linear 4× → GELU → Linear → layer scale."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)  # [B, H, W, C]
        y = self.gamma * self.pwconv2(nn.functional.gelu(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, dim: int = 16, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, 4)
        self.blocks = nn.Sequential(ConvNeXtBlock(dim), ConvNeXtBlock(dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))
