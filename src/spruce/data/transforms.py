"""Standard augmentations in plain PyTorch (torchvision does not import on the CPU build).

Every transform takes one image ``[C, H, W]`` (float, 0..1 unless normalised) and a
``torch.Generator`` (or None for the deterministic ones) and returns one image. Each
sample gets its own generator seeded from (seed, epoch, position in the epoch), so the
augmentation of a sample does not depend on how batches are split across processes or
on where a resumed run picks up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _randint(gen: torch.Generator | None, high: int) -> int:
    """Uniform integer in [0, high] (inclusive)."""
    return int(torch.randint(0, high + 1, (1,), generator=gen))


def _uniform(gen: torch.Generator | None, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def to_float(img: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """uint8 0..255 → float32 0..1 (float input is returned as float32)."""
    return img.float().div_(255.0) if img.dtype == torch.uint8 else img.float()


def normalize(img: torch.Tensor, gen: torch.Generator | None = None, *,
              mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=img.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=img.dtype).view(-1, 1, 1)
    return (img - m) / s


def random_crop(img: torch.Tensor, gen: torch.Generator | None, *, size: int,
                padding: int = 0) -> torch.Tensor:
    """Zero-pad by ``padding`` on each side, then crop ``size × size`` at a random place."""
    if padding:
        img = F.pad(img, (padding, padding, padding, padding))
    _, h, w = img.shape
    top, left = _randint(gen, h - size), _randint(gen, w - size)
    return img[:, top:top + size, left:left + size]


def random_hflip(img: torch.Tensor, gen: torch.Generator | None, *,
                 p: float = 0.5) -> torch.Tensor:
    return img.flip(-1) if float(torch.rand((), generator=gen)) < p else img


def resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of one image to ``(h, w)`` (antialiased when shrinking)."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    shrink = size[0] < img.shape[-2] or size[1] < img.shape[-1]
    out = F.interpolate(img.unsqueeze(0), size=size, mode="bilinear", align_corners=False,
                        antialias=shrink)
    return out.squeeze(0)


def resize_shorter(img: torch.Tensor, gen: torch.Generator | None = None, *,
                   size: int) -> torch.Tensor:
    """Resize so the shorter side is ``size``, keeping the aspect ratio."""
    _, h, w = img.shape
    scale = size / min(h, w)
    return resize(img, (max(size, round(h * scale)), max(size, round(w * scale))))


def center_crop(img: torch.Tensor, gen: torch.Generator | None = None, *,
                size: int) -> torch.Tensor:
    _, h, w = img.shape
    if h < size or w < size:
        img = resize_shorter(img, size=size)
        _, h, w = img.shape
    top, left = (h - size) // 2, (w - size) // 2
    return img[:, top:top + size, left:left + size]


def random_resized_crop(img: torch.Tensor, gen: torch.Generator | None, *, size: int,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Inception-style crop: random area fraction and aspect ratio, resized to ``size``;
    after 10 failed draws, a centre crop of the whole image (as torchvision does)."""
    _, h, w = img.shape
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(gen, *scale)
        aspect = math.exp(_uniform(gen, *log_r))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = _randint(gen, h - ch), _randint(gen, w - cw)
            return resize(img[:, top:top + ch, left:left + cw], (size, size))
    return resize(center_crop(img, size=min(h, w)), (size, size))


def compose(*steps: Transform) -> Transform:
    def run(img: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        for step in steps:
            img = step(img, gen)
        return img
    return run


def cifar_train(size: int = 32, padding: int = 4, mean=CIFAR10_MEAN, std=CIFAR10_STD
                ) -> Transform:
    """Random crop with zero padding, horizontal flip, per-channel normalisation."""
    return compose(to_float, partial(random_crop, size=size, padding=padding),
                   random_hflip, partial(normalize, mean=mean, std=std))


def plain_eval(mean=CIFAR10_MEAN, std=CIFAR10_STD) -> Transform:
    return compose(to_float, partial(normalize, mean=mean, std=std))


def imagenet_train(size: int = 224) -> Transform:
    return compose(to_float, partial(random_resized_crop, size=size), random_hflip,
                   partial(normalize, mean=IMAGENET_MEAN, std=IMAGENET_STD))


def imagenet_eval(size: int = 224, resize_to: int | None = None) -> Transform:
    """Resize the shorter side to ``size · 256/224``, centre crop ``size``, normalise."""
    resize_to = resize_to or round(size * 256 / 224)
    return compose(to_float, partial(resize_shorter, size=resize_to),
                   partial(center_crop, size=size),
                   partial(normalize, mean=IMAGENET_MEAN, std=IMAGENET_STD))
