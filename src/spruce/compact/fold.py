"""Fold each BatchNorm that directly follows a convolution into it (inference only).

``bn(conv(x)) = conv'(x)`` with ``W' = W · s`` per output channel and
``b' = (b − mean) · s + β``, ``s = γ / sqrt(var + ε)``: the BatchNorm module becomes an
``nn.Identity``. Only a convolution whose output feeds the BatchNorm alone is folded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..masks import set_submodule
from ..structure.apply import weight_of
from ..structure.trace import export, placeholder_names

BN_OPS = ("batch_norm", "_native_batch_norm_legit_no_training")
CONV_OPS = ("conv1d", "conv2d", "conv3d", "convolution")


def _op(node: Any) -> str:
    schema = getattr(node.target, "_schema", None)
    return schema.name.split("::")[-1] if schema is not None else ""


def _placeholder(node: Any) -> str | None:
    """The parameter placeholder behind ``node`` (a masked weight is ``original * mask``)."""
    while getattr(node, "op", None) == "call_function" and _op(node) == "mul":
        node = node.args[0]
    return node.target if getattr(node, "op", None) == "placeholder" else None


def _pairs(model: nn.Module, x: Any) -> list[tuple[str, str]]:
    """(conv module, BatchNorm module) names where the BatchNorm reads the conv alone."""
    program = export(model, x)
    names = placeholder_names(program)
    pairs = []
    for node in program.graph.nodes:
        if node.op != "call_function" or _op(node) not in BN_OPS:
            continue
        conv, bn_weight = node.args[0], node.args[1]
        if getattr(conv, "op", None) != "call_function" or _op(conv) not in CONV_OPS \
                or len(conv.users) != 1 or not hasattr(bn_weight, "target"):
            continue
        w, bn = names.get(_placeholder(conv.args[1])), names.get(_placeholder(bn_weight))
        if w and bn and w.endswith(".weight") and bn.endswith(".weight"):
            pairs.append((w.rpartition(".")[0], bn.rpartition(".")[0]))
    return pairs


def fold_batchnorms(model: nn.Module, x: Any) -> list[str]:
    """Fold in place; returns the names of the BatchNorms folded away."""
    folded = []
    for conv_name, bn_name in _pairs(model, x):
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if bn.running_mean is None:
            continue
        with torch.no_grad():
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale + (0 if bn.bias is None else bn.bias)
            w = weight_of(conv)
            w.mul_(scale.to(w.dtype).reshape(-1, *([1] * (w.dim() - 1))))
            bias = shift if conv.bias is None else conv.bias * scale + shift
            conv.bias = nn.Parameter(bias.to(w.dtype))
        set_submodule(model, bn_name, nn.Identity())
        folded.append(bn_name)
    return folded
