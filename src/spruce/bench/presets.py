"""Named layer shapes to benchmark, as records with named fields.

    from spruce.bench.presets import get_shape, scaled
    conv = get_shape("vgg16-conv")                 # ConvShape(512→512 3×3, 28², batch 64)
    small = scaled(conv, 1 / 32)                   # the same layer at batch 2
    ffn = get_shape("linear:768:3072:256")         # a shape written on the command line

The presets are the layers the paper measures (Figs. 11–14: VGG-16's 512→512 3×3 conv at
28×28 and its 4096→4096 classifier layer, batch 64) and the projections of BERT-base and
ViT-B (the GEMMs of Figs. 2 and 10). Weights are random and seeded: latency does not depend
on their values, only on the kept structure.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import nn

BERT_SEQ_LEN = 128   # QQP's sequence length (the paper's BERT setting)
VIT_TOKENS = 197     # ViT-B/16 at 224²: 14·14 patches + the class token
PAPER_BATCH = 64     # the batch of every layer measurement in the paper


@dataclass(frozen=True)
class LinearShape:
    """A Linear layer applied to ``tokens`` rows: ``[tokens, in] @ [in, out]``."""

    kind: ClassVar[str] = "linear"
    name: str          # preset name, the row label in tables and plots
    in_features: int   # K of the GEMM
    out_features: int  # R of the GEMM
    tokens: int        # rows of the input: batch × sequence length (or just batch)

    def build(self, seed: int = 0) -> nn.Linear:
        """The layer with seeded random weights and a bias (fp32, CPU)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return nn.Linear(self.in_features, self.out_features)

    def input_shape(self) -> tuple[int, ...]:
        return (self.tokens, self.in_features)

    def describe(self) -> str:
        return f"{self.in_features}→{self.out_features} × {self.tokens} tokens"


@dataclass(frozen=True)
class ConvShape:
    """A Conv2d on a ``[batch, in_channels, hw, hw]`` input."""

    kind: ClassVar[str] = "conv"
    name: str          # preset name, the row label in tables and plots
    in_channels: int   # C
    out_channels: int  # O
    kernel: int        # square kernel side (3 for VGG)
    stride: int        # square stride
    padding: int       # square zero padding
    hw: int            # input height = width
    batch: int         # images per call

    def build(self, seed: int = 0) -> nn.Conv2d:
        """The layer with seeded random weights and a bias (fp32, CPU)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return nn.Conv2d(self.in_channels, self.out_channels, self.kernel,
                             stride=self.stride, padding=self.padding)

    def input_shape(self) -> tuple[int, ...]:
        return (self.batch, self.in_channels, self.hw, self.hw)

    def describe(self) -> str:
        return (f"{self.in_channels}→{self.out_channels} {self.kernel}×{self.kernel}/"
                f"{self.stride} pad {self.padding}, {self.hw}², batch {self.batch}")


Shape = LinearShape | ConvShape


def bert_shapes(batch: int = PAPER_BATCH, seq_len: int = BERT_SEQ_LEN) -> list[LinearShape]:
    """The four GEMMs of a BERT-base encoder layer at ``batch × seq_len`` tokens."""
    tokens = batch * seq_len
    return [LinearShape("bert-base-qkv", 768, 2304, tokens),
            LinearShape("bert-base-out", 768, 768, tokens),
            LinearShape("bert-base-ffn1", 768, 3072, tokens),
            LinearShape("bert-base-ffn2", 3072, 768, tokens)]


LAYER_PRESETS: dict[str, Shape] = {s.name: s for s in [
    ConvShape("vgg16-conv", 512, 512, kernel=3, stride=1, padding=1, hw=28, batch=PAPER_BATCH),
    LinearShape("vgg16-fc", 4096, 4096, tokens=PAPER_BATCH),
    *bert_shapes(),
    LinearShape("vit-b-mlp", 768, 3072, tokens=VIT_TOKENS * PAPER_BATCH),
]}

SHAPE_SYNTAX = "linear:IN:OUT:TOKENS or conv:C:O:K:HW:BATCH[:STRIDE[:PAD]]"


def scaled(shape: Shape, factor: float) -> Shape:
    """The same layer with its batch (conv) or token count (linear) times ``factor``
    (at least 1): a preset shrunk for a CPU run keeps its weight shape."""
    if not factor > 0:
        raise ValueError(f"scale factor must be > 0; got {factor}")
    if isinstance(shape, ConvShape):
        return replace(shape, batch=max(1, round(shape.batch * factor)))
    return replace(shape, tokens=max(1, round(shape.tokens * factor)))


def parse_shape(text: str) -> Shape:
    """``linear:IN:OUT:TOKENS`` or ``conv:C:O:K:HW:BATCH[:STRIDE[:PAD]]`` (PAD defaults
    to K//2, "same" for odd K). The shape is named by its own text."""
    kind, _, rest = text.strip().lower().partition(":")
    fields = rest.split(":") if rest else []
    try:
        nums = [int(f) for f in fields]
    except ValueError:
        raise ValueError(f"cannot read shape {text!r}: every field after the kind must be "
                         f"an integer; write {SHAPE_SYNTAX}") from None
    if kind == "linear" and len(nums) == 3:
        shape: Shape = LinearShape(text, *nums)
    elif kind == "conv" and 5 <= len(nums) <= 7:
        c, o, k, hw, batch = nums[:5]
        stride = nums[5] if len(nums) > 5 else 1
        pad = nums[6] if len(nums) > 6 else k // 2
        shape = ConvShape(text, c, o, k, stride, pad, hw, batch)
    else:
        raise ValueError(f"cannot read shape {text!r}; write {SHAPE_SYNTAX}, or a preset: "
                         f"{', '.join(LAYER_PRESETS)}")
    _check(shape, text)
    return shape


def _check(shape: Shape, text: str) -> None:
    if isinstance(shape, LinearShape):
        sizes = {"IN": shape.in_features, "OUT": shape.out_features, "TOKENS": shape.tokens}
    else:
        sizes = {"C": shape.in_channels, "O": shape.out_channels, "K": shape.kernel,
                 "HW": shape.hw, "BATCH": shape.batch, "STRIDE": shape.stride}
    bad = [f"{k}={v}" for k, v in sizes.items() if v < 1]
    if isinstance(shape, ConvShape) and shape.padding < 0:
        bad.append(f"PAD={shape.padding}")
    if bad:
        raise ValueError(f"shape {text!r}: {', '.join(bad)} must be >= 1 (PAD >= 0)")
    if isinstance(shape, ConvShape) and shape.hw + 2 * shape.padding < shape.kernel:
        raise ValueError(f"shape {text!r}: a {shape.kernel}×{shape.kernel} kernel does not "
                         f"fit a {shape.hw}² input with padding {shape.padding}")


def get_shape(shape: str | Shape) -> Shape:
    """A preset name, a shape string (see :func:`parse_shape`) or a shape record."""
    if isinstance(shape, (LinearShape, ConvShape)):
        return shape
    if not isinstance(shape, str):
        raise TypeError(f"a layer shape is a preset name, a shape string or a "
                        f"LinearShape/ConvShape; got {type(shape).__name__}")
    if shape in LAYER_PRESETS:
        return LAYER_PRESETS[shape]
    if ":" not in shape:
        raise ValueError(f"unknown layer preset {shape!r}; valid: {', '.join(LAYER_PRESETS)}, "
                         f"or a shape {SHAPE_SYNTAX}")
    return parse_shape(shape)
