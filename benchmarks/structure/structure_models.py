"""The models of the structure benchmark: presets, how each family is built, and its floor.

A ``Case`` is one model of a preset; its ``family`` names a ``Family`` record in
``FAMILIES`` that knows how to build the dense model, make its input, bring its
activations to O(1) and build the *floor*: the same architecture built directly at the
widths a 50% coupled pruning leaves, with fresh weights. Where a family cannot be built at
those widths from its config (HF BERT computes the head size as hidden / heads), its floor
is None and the benchmark rebuilds the compacted model's shapes with fresh contiguous
weights instead (and says so in the row).

Variants (``VARIANTS``) are the pruning calls compared: ``coupled`` prunes every coupled
channel group (residual streams of CNNs included); ``inner`` keeps residual streams whole
(``coupled={"stream": False}``). LayerNorm/RMSNorm streams are never pruned, so the
transformer cases run ``coupled`` only.

The set-up every model goes through is here too: a seeded build on the device, BatchNorm
calibration, the timed (fp16, channels-last) copies and the rotating inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from spruce import zoo
from spruce.bench import make_inputs
from spruce.bench.baseline import calibrate_batchnorm
from spruce.zoo.resnet import DEFAULT_WIDTHS, BasicBlock, Bottleneck, ResNet
from structure_metrics import call, first_tensor


@dataclass(frozen=True)
class Variant:
    """One pruning call of the benchmark."""

    name: str
    prune_kwargs: dict[str, Any]  # extra keywords for spruce.prune beyond the shared ones
    stream: bool                  # whether residual streams are pruned (the floor follows)


VARIANTS = {v.name: v for v in (
    Variant("coupled", {}, stream=True),
    Variant("inner", {"coupled": {"stream": False}}, stream=False),
)}


@dataclass(frozen=True)
class Case:
    """One model of a preset."""

    name: str                     # the row label; what --models selects
    family: str                   # key of FAMILIES
    batch: int
    size: dict[str, Any]          # the family's sizes: config fields, image size, tokens
    variants: tuple[str, ...] = ("coupled",)   # keys of VARIANTS


@dataclass(frozen=True)
class Preset:
    """A list of cases and where/how they are measured."""

    name: str
    device: str
    dtype: torch.dtype
    cases: tuple[Case, ...]
    min_runs: int                 # timed samples per path, at least
    min_time_s: float             # timed seconds per path, at least
    threads: int | None = None    # CPU threads (None: torch's default)


@dataclass(frozen=True)
class Family:
    """How to build, feed and floor one kind of model."""

    build: Callable[[Case], nn.Module]       # the dense model, random init, fp32
    example: Callable[[Case], Any]           # one fp32 CPU input batch
    floor: Callable[[Case, Variant, Callable[[int], int]], nn.Module | None]
    floor_note: str                          # why a None floor comes from compacted shapes
    describe: Callable[[Case], str]          # the input, for the row ("224²", "128 tokens")
    exclude: tuple[str, ...] = ()            # layer globs spruce.prune leaves alone
    channels_last: bool = False
    calibrate: bool = False                  # BatchNorm statistics from random inputs
    vocab: Callable[[Case], int] = field(default=lambda case: 30522)


def kept(n: int, density: float) -> int:
    """Channels (or heads) a density keeps of ``n``: rounded, at least one."""
    return max(1, round(n * density))


# ------------------------------------------------------------------------------ ResNets

RESNET = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet50": (Bottleneck, (3, 4, 6, 3))}


def _resnet(case: Case, widths: dict[str, Any]) -> nn.Module:
    """``size``: arch (resnet18/resnet50), dataset, optional blocks (per stage) and base
    widths. Without ``blocks`` this is the zoo model itself."""
    s = case.size
    if "blocks" not in s:
        return zoo.build(s["arch"], s["dataset"], **widths)
    block, _ = RESNET[s["arch"]]
    ds = zoo.DATASETS[s["dataset"]]
    return ResNet(block, list(s["blocks"]), ds.num_classes, small_input=ds.image_size < 224,
                  **widths)


def _resnet_widths(case: Case) -> dict[str, Any]:
    widths = tuple(case.size.get("widths", DEFAULT_WIDTHS))
    return {"stem_width": case.size.get("stem_width", widths[0]), "widths": widths}


def resnet_floor_widths(case: Case, variant: Variant, keep: Callable[[int], int]) -> dict:
    """The widths 50% coupled pruning leaves: every inner width kept; with ``stream``
    every residual stream (stage outputs, and the stem where it feeds layer1's adds) kept
    too. A Bottleneck ResNet's stem feeds no add (layer1 opens with a downsample), so it
    is an inner group and is kept in both variants."""
    base = _resnet_widths(case)
    block, _ = RESNET[case.size["arch"]]
    outs = [w * block.expansion for w in base["widths"]]
    stem = base["stem_width"]
    if variant.stream or block is Bottleneck:
        stem = keep(stem)
    return {"stem_width": stem, "widths": tuple(keep(w) for w in base["widths"]),
            "out_widths": tuple(keep(o) for o in outs) if variant.stream else tuple(outs)}


def _resnet_example(case: Case) -> torch.Tensor:
    return zoo.example_input(case.size["arch"], case.size["dataset"], batch=case.batch)


RESNET_FAMILY = Family(
    build=lambda case: _resnet(case, _resnet_widths(case)),
    example=_resnet_example,
    floor=lambda case, variant, keep: _resnet(case, resnet_floor_widths(case, variant, keep)),
    floor_note="",
    describe=lambda case: f"{zoo.DATASETS[case.size['dataset']].image_size}²",
    channels_last=True, calibrate=True)   # fc stays whole: coupled pruning keeps outputs


# --------------------------------------------------------------------- HF transformers

def _bert(config: dict[str, Any]) -> nn.Module:
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(attn_implementation="sdpa", **config), add_pooling_layer=False)


def _bert_example(case: Case) -> dict[str, torch.Tensor]:
    """Token ids only: no padding, so no attention mask, and every path (eager, CUDA graph,
    compiled) runs the same unmasked attention (HF builds the mask only while tracing)."""
    x = zoo.example_input("bert_base", "qqp", batch=case.batch, seq_len=case.size["tokens"])
    return {"input_ids": x["input_ids"]}


BERT_FAMILY = Family(
    build=lambda case: _bert(case.size["config"]),
    example=_bert_example,
    floor=lambda case, variant, keep: None,
    floor_note="floor = the compacted model's shapes with fresh contiguous weights "
               "(BertConfig computes the head size as hidden / heads)",
    describe=lambda case: f"{case.size['tokens']} tokens",
    vocab=lambda case: case.size["config"].get("vocab_size", 30522))


def _vit(config: dict[str, Any]) -> nn.Module:
    from transformers import ViTConfig, ViTModel

    return ViTModel(ViTConfig(attn_implementation="sdpa", **config), add_pooling_layer=False)


def _vit_floor(case: Case, variant: Variant, keep: Callable[[int], int]) -> nn.Module | None:
    """ViT at half the heads and half the MLP, head size kept, where this transformers
    reads ``head_dim`` from the config; None (compacted shapes) where it does not."""
    from transformers import ViTConfig

    cfg = ViTConfig(**case.size["config"])
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    heads = keep(cfg.num_attention_heads)
    model = _vit({**case.size["config"], "num_attention_heads": heads, "head_dim": head_dim,
                  "intermediate_size": keep(cfg.intermediate_size)})
    query = next(m for n, m in model.named_modules() if n.endswith(("query", "q_proj")))
    return model if query.out_features == heads * head_dim else None


def _image(case: Case) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    size = case.size["config"].get("image_size", 224)
    return torch.randn(case.batch, 3, size, size, generator=g)


VIT_FAMILY = Family(
    build=lambda case: _vit(case.size["config"]),
    example=_image,
    floor=_vit_floor,
    floor_note="floor = the compacted model's shapes with fresh contiguous weights "
               "(this transformers ignores ViTConfig.head_dim)",
    describe=lambda case: f"{case.size['config'].get('image_size', 224)}²")


def _llama(config: dict[str, Any]) -> nn.Module:
    from transformers import LlamaConfig, LlamaModel

    # no KV cache: one forward over the whole sequence (prefill), nothing kept for later
    return LlamaModel(LlamaConfig(attn_implementation="sdpa", use_cache=False, **config))


def _llama_floor(case: Case, variant: Variant, keep: Callable[[int], int]) -> nn.Module:
    """Half the query heads and KV heads (GQA groups kept), half the SwiGLU width,
    ``head_dim`` and the hidden size kept."""
    c = case.size["config"]
    head_dim = c.get("head_dim", c["hidden_size"] // c["num_attention_heads"])
    return _llama({**c, "head_dim": head_dim,
                   "num_attention_heads": keep(c["num_attention_heads"]),
                   "num_key_value_heads": keep(c["num_key_value_heads"]),
                   "intermediate_size": keep(c["intermediate_size"])})


def _tokens(case: Case) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    vocab = case.size["config"]["vocab_size"]
    return {"input_ids": torch.randint(1000, vocab, (case.batch, case.size["tokens"]),
                                       generator=g)}


LLAMA_FAMILY = Family(
    build=lambda case: _llama(case.size["config"]),
    example=_tokens,
    floor=_llama_floor,
    floor_note="",
    describe=lambda case: f"{case.size['tokens']} tokens",
    vocab=lambda case: case.size["config"]["vocab_size"])

FAMILIES = {"resnet": RESNET_FAMILY, "bert": BERT_FAMILY, "vit": VIT_FAMILY,
            "llama": LLAMA_FAMILY}


# ------------------------------------------------------------------------ set-up

def calibrate_bn(model: nn.Module, example: Any, batches: int = 4) -> None:
    """BatchNorm running statistics from ``batches`` random standard-normal inputs shaped
    like ``example`` (``spruce.bench.baseline.calibrate_batchnorm``); then eval mode."""
    calibrate_batchnorm(model, [torch.randn_like(example) for _ in range(batches)])
    model.eval()

def build(fam: Family, make, device: torch.device, example: Any) -> nn.Module | None:
    """``make()`` on ``device`` with a fixed seed, calibrated where the family needs it."""
    torch.manual_seed(0)
    with torch.device(device):
        model = make()
    if model is None:
        return None
    if fam.calibrate:
        calibrate_bn(model, example)
    return model.eval()


def timed_copy(model: nn.Module, dtype: torch.dtype, channels_last: bool) -> nn.Module:
    m = copy.deepcopy(model).to(dtype).eval()
    return m.to(memory_format=torch.channels_last) if channels_last else m


def fresh_copy(model: nn.Module) -> nn.Module:
    """A copy whose parameters and buffers sit in fresh contiguous storage."""
    m = copy.deepcopy(model)
    for t in [*m.parameters(), *m.buffers()]:
        t.data = t.data.clone(memory_format=torch.contiguous_format)
    return m


def inputs_for(case: Case, fam: Family, dtype: torch.dtype, device: torch.device):
    """Rotating timed inputs and the fp32 reference input (the values of the first)."""
    example = fam.example(case)
    if isinstance(example, torch.Tensor) and fam.channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    inputs = make_inputs(example, dtype=dtype, device=device, vocab=fam.vocab(case))
    first = inputs[0]
    ref = {k: v.float() if v.is_floating_point() else v for k, v in first.items()} \
        if isinstance(first, dict) else first.float().contiguous()
    return inputs, ref


def reference(model: nn.Module, x: Any) -> torch.Tensor:
    """The fp32 output a model is judged by (see ``first_tensor``)."""
    with torch.inference_mode():
        return first_tensor(call(model, x)).float().clone()


# ------------------------------------------------------------------------------ presets

LLAMA_1B = {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 16,
            "num_key_value_heads": 4, "intermediate_size": 5632, "vocab_size": 32000}
TINY_ENCODER = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                "intermediate_size": 96}
TINY_WIDTHS = (8, 16, 32, 64)

PRESETS = {p.name: p for p in (
    Preset("h200", "cuda", torch.float16, (
        Case("resnet18", "resnet", 64, {"arch": "resnet18", "dataset": "imagenet"},
             ("coupled", "inner")),
        Case("resnet50", "resnet", 64, {"arch": "resnet50", "dataset": "imagenet"},
             ("coupled", "inner")),
        Case("bert_base", "bert", 64, {"config": {}, "tokens": 128}),
        Case("vit_b16", "vit", 64, {"config": {}}),
        Case("llama_1b", "llama", 8, {"config": LLAMA_1B, "tokens": 512}),
    ), min_runs=20, min_time_s=0.5),
    Preset("cpu-smoke", "cpu", torch.float32, (
        Case("resnet18", "resnet", 2, {"arch": "resnet18", "dataset": "cifar10",
                                       "blocks": (1, 1, 1, 1), "widths": TINY_WIDTHS},
             ("coupled", "inner")),
        Case("resnet50", "resnet", 2, {"arch": "resnet50", "dataset": "cifar10",
                                       "blocks": (1, 1, 1, 1), "widths": TINY_WIDTHS}),
        Case("bert_base", "bert", 2, {"config": TINY_ENCODER, "tokens": 16}),
        Case("vit_b16", "vit", 2, {"config": {**TINY_ENCODER, "image_size": 32,
                                              "patch_size": 8}}),
        Case("llama_1b", "llama", 2, {"config": {**TINY_ENCODER, "num_key_value_heads": 2,
                                                 "vocab_size": 2048}, "tokens": 32}),
    ), min_runs=5, min_time_s=0.05, threads=1),   # one thread: robust on a shared CPU
)}
