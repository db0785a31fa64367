"""The models of the compiled-baseline grid: spruce's zoo, torchvision and Hugging Face
models built from configs (random weights, nothing downloaded). Each entry knows how to
build the fp32 model, make one input batch, whether it runs channels-last, which layers
pruning leaves alone (classifier heads) and whether its BatchNorm statistics must be
calibrated on random inputs (a random torchvision network otherwise gives outputs near
zero: MobileNetV3-Large's fp32 output has a norm of about 6e-8 and underflows in fp16).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from spruce import zoo


@dataclass(frozen=True)
class Entry:
    build: Callable[[], nn.Module]
    example: Callable[[int], Any]          # batch -> one fp32 CPU input batch
    channels_last: bool = False
    exclude: tuple[str, ...] = ()          # module-name globs never pruned
    calibrate: bool = False                # BatchNorm statistics from random inputs
    source: str = ""


def _image(batch: int, size: int = 224) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _tokens(batch: int, tokens: int = 128, vocab: int = 30522) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(1000, vocab, (batch, tokens), generator=g)}


def _zoo(name: str, dataset: str) -> Callable[[], nn.Module]:
    return lambda: zoo.build(name, dataset, seed=0)


def _zoo_bert(batch: int) -> dict[str, torch.Tensor]:
    x = zoo.example_input("bert_base", "qqp", batch=batch, seed=0)
    return {"input_ids": x["input_ids"]}  # no padding: every path runs unmasked attention


def _tv(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None)
    return build


def _hf_bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(attn_implementation="sdpa"), add_pooling_layer=False)


def _hf_vit() -> nn.Module:
    from transformers import ViTConfig, ViTModel

    return ViTModel(ViTConfig(attn_implementation="sdpa"), add_pooling_layer=False)


LLAMA_SMALL = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8,
               "num_attention_heads": 16, "num_key_value_heads": 4, "vocab_size": 32000}


def _hf_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaModel

    return LlamaModel(LlamaConfig(attn_implementation="sdpa", use_cache=False, **LLAMA_SMALL))


def _smoke_cnn() -> nn.Module:
    """A few conv-BN-ReLU layers and a head: the grid's CPU smoke test."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


HEADS = ("fc", "classifier*", "head*", "heads*", "*.fc")
MODELS: dict[str, Entry] = {
    "vgg16": Entry(_zoo("vgg16", "imagenet"), _image, True, HEADS, True, "spruce zoo"),
    "resnet18": Entry(_zoo("resnet18", "imagenet"), _image, True, HEADS, True, "spruce zoo"),
    "vit_b16": Entry(_zoo("vit", "imagenet"), _image, False, HEADS, False, "spruce zoo"),
    "bert_base": Entry(_zoo("bert_base", "qqp"), _zoo_bert, False, HEADS, False,
                       "spruce zoo"),
    "tv_resnet50": Entry(_tv("resnet50"), _image, True, HEADS, True, "torchvision"),
    "tv_mobilenet_v3_large": Entry(_tv("mobilenet_v3_large"), _image, True, HEADS, True,
                                   "torchvision"),
    "tv_convnext_tiny": Entry(_tv("convnext_tiny"), _image, True, HEADS, False,
                              "torchvision"),
    "tv_swin_t": Entry(_tv("swin_t"), _image, False, HEADS, False, "torchvision"),
    "hf_bert_base": Entry(_hf_bert, _tokens, False, (), False, "transformers (config)"),
    "hf_vit_base": Entry(_hf_vit, _image, False, (), False, "transformers (config)"),
    "hf_llama_small": Entry(_hf_llama, lambda b: _tokens(b, 512, LLAMA_SMALL["vocab_size"]),
                            False, (), False, "transformers (config; 8 layers × 1024)"),
    "smoke_cnn": Entry(_smoke_cnn, lambda b: _image(b, 16), True, ("11",), True, "CPU smoke"),
}
BATCH = {"hf_llama_small": 8}   # sequences of 512 tokens; every other model: batch 64
