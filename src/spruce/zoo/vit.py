"""Vision Transformer (Dosovitskiy et al., 2020), configurable.

Presets (any ``ViTConfig`` field can be overridden through ``build(..., **kwargs)``):

    imagenet       ViT-B/16: 224px, patch 16, dim 768, depth 12, heads 12, mlp 3072
                   -> 86,567,656 params, the same count and layout as torchvision vit_b_16
    cifar10        32px, patch 4 (8x8 = 64 patches), dim 384, depth 6, heads 6, mlp 1536
    tiny-imagenet  64px, patch 8 (8x8 = 64 patches), same sizes as cifar10

Layout follows torchvision (``conv_proj``, ``class_token``, learned
``pos_embedding``, pre-norm blocks with ``ln_1``, ``self_attention``, ``ln_2``,
``mlp`` = Linear-GELU-Dropout-Linear-Dropout, final ``ln``, ``heads.head``) with
two deliberate differences:

* attention is written out with a packed ``self_attention.qkv`` ``nn.Linear``
  (dim -> 3*dim) and ``self_attention.out_proj`` and calls
  ``F.scaled_dot_product_attention``; torchvision's ``nn.MultiheadAttention``
  keeps in_proj as a bare Parameter. Same parameter count, but every projection
  is a prunable ``nn.Linear``. Blocks sit in a flat ``layers`` ModuleList and
  ``pos_embedding`` / ``ln`` live on the top-level module.
* the classification head is initialised like the other Linears
  (trunc-normal, std 0.02) instead of torchvision's all-zeros, so a freshly
  built model does not output constant logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Dataset, register


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 224
    patch_size: int = 16
    dim: int = 768           # token width
    depth: int = 12          # number of encoder blocks
    heads: int = 12          # attention heads (dim % heads == 0)
    mlp_dim: int = 3072      # hidden width of each block's MLP
    num_classes: int = 1000
    dropout: float = 0.0
    attention_dropout: float = 0.0


PRESETS: dict[str, ViTConfig] = {
    "imagenet": ViTConfig(),  # ViT-B/16
    "cifar10": ViTConfig(image_size=32, patch_size=4, dim=384, depth=6, heads=6,
                         mlp_dim=1536, num_classes=10),
    "tiny-imagenet": ViTConfig(image_size=64, patch_size=8, dim=384, depth=6, heads=6,
                               mlp_dim=1536, num_classes=200),
}


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        assert dim % heads == 0, f"dim {dim} not divisible by heads {heads}"
        self.heads = heads
        self.head_dim = dim // heads  # kept when heads are removed (spruce.compact)
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)    # packed q, k, v projections
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape                                       # [B, N, D]
        qkv = self.qkv(x).view(B, N, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                    # 3 x [B, heads, N, D/heads]
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # [B, heads, N, D/heads]
        y = y.transpose(1, 2).reshape(B, N, -1)                 # [B, N, heads·D/heads]
        return self.out_proj(y)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x))."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.self_attention = SelfAttention(cfg.dim, cfg.heads, cfg.attention_dropout)
        self.dropout = nn.Dropout(cfg.dropout)
        self.ln_2 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.dim, cfg.mlp_dim), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.mlp_dim, cfg.dim), nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.self_attention(self.ln_1(x)))  # [B, N, D]
        return x + self.mlp(self.ln_2(x))                         # [B, N, D]


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of "
                             f"patch_size {cfg.patch_size}")
        self.cfg = cfg
        n_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.conv_proj = nn.Conv2d(3, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embedding = nn.Parameter(torch.empty(1, n_patches + 1, cfg.dim))
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.depth))
        self.ln = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.heads = nn.Sequential()
        self.heads.add_module("head", nn.Linear(cfg.dim, cfg.num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        fan_in = self.conv_proj.in_channels * self.cfg.patch_size ** 2
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.conv_proj.bias)
        nn.init.normal_(self.pos_embedding, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        if H != self.cfg.image_size or W != self.cfg.image_size:
            size = self.cfg.image_size
            raise ValueError(f"expected {size}x{size} input, got {H}x{W}")
        x = self.conv_proj(x)                         # [B, D, H/p, W/p]
        x = x.flatten(2).transpose(1, 2)              # [B, N, D]   N = (H/p)*(W/p)
        cls = self.class_token.expand(B, -1, -1)      # [B, 1, D]
        x = torch.cat([cls, x], dim=1)                # [B, N+1, D]
        x = self.dropout(x + self.pos_embedding)
        for block in self.layers:
            x = block(x)                              # [B, N+1, D]
        x = self.ln(x)
        return self.heads(x[:, 0])                    # class token -> [B, classes]


@register("vit")
def vit(ds: Dataset, num_classes: int, **overrides) -> VisionTransformer:
    cfg = replace(PRESETS[ds.name], num_classes=num_classes, **overrides)
    return VisionTransformer(cfg)
