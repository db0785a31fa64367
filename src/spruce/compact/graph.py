"""Find each layer's producer by tracing the model into a graph.

The model is traced with ``torch.export`` (non-strict, eval mode), which yields a
``torch.fx`` graph of ATen ops in which every node remembers the module that ran it
(``nn_module_stack``). It traces plain PyTorch and Hugging Face models alike
(``transformers.utils.fx`` is gone from transformers 5). A consumer's input is followed
back through ops that act on every channel separately — activations, dropout, scalar
arithmetic, BatchNorm, and for convolutions pooling — to a ``Linear``/``Conv2d``; every
tensor on the way must feed that path alone. Anything else stops the walk with a reason.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.nn.utils.parametrize import type_before_parametrizations

aten = torch.ops.aten


def _ops(*names: str) -> frozenset:
    """ATen overloads named ``op`` or ``op.overload`` (``.default``); absent ones skipped."""
    found = set()
    for spec in names:
        op, _, overload = spec.partition(".")
        packet = getattr(aten, op, None)
        if packet is not None and hasattr(packet, overload or "default"):
            found.add(getattr(packet, overload or "default"))
    return frozenset(found)


LAYER_OPS = _ops("linear", "conv2d", "convolution")
# channel c of the output depends on channel c of the first argument only (other args constant)
ELEMENTWISE = _ops("relu", "relu_", "gelu", "gelu_", "silu", "silu_", "tanh", "tanh_",
                   "sigmoid", "sigmoid_", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_",
                   "elu", "elu_", "hardswish", "hardswish_", "mish", "dropout", "feature_dropout",
                   "alpha_dropout", "clone", "alias", "to.dtype", "to.dtype_layout", "_to_copy",
                   "mul.Tensor", "mul.Scalar", "add.Tensor", "add.Scalar", "sub.Tensor",
                   "sub.Scalar", "div.Tensor", "div.Scalar")
POOLS = _ops("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d")  # per channel on [B, C, H, W]
NORMS = _ops("batch_norm")
RESHAPES = _ops("flatten.using_ints", "view", "reshape", "_unsafe_view", "squeeze",
                "squeeze.dim", "squeeze.dims")  # allowed only as [B, C, 1, 1] → [B, C]
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


class TraceError(RuntimeError):
    """The model could not be traced; nothing is compacted."""


@dataclass
class Chain:
    """A consumer's input path back to its producer (or why there is none)."""

    producer: str | None = None
    through: list[str] = field(default_factory=list)  # ops between, producer side first
    norms: list[str] = field(default_factory=list)  # BatchNorm modules to slice with the channels
    norm_first: bool = False  # a BatchNorm directly follows the producer (it can be folded)
    reason: str | None = None
    flattened: bool = False  # a [B, C, 1, 1] → [B, C] flatten lies between (conv → linear)
    dim1_ranks: list[int] = field(default_factory=list)  # ranks where an op works on dim 1


def _module_path(node: fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    return list(stack.values())[-1][0] if stack else None


def _call(model: nn.Module, x: Any) -> tuple[tuple, dict]:
    if isinstance(x, dict):
        return (), dict(x)
    return (tuple(x) if isinstance(x, (tuple, list)) else (x,)), {}


def trace(model: nn.Module, example_input: Any) -> fx.Graph:
    """The model's ATen graph for ``example_input`` (traced in eval mode, model unchanged)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    args, kwargs = _call(model, example_input)
    try:
        return torch.export.export(model, args, kwargs, strict=False).graph
    except Exception as e:  # export raises many types; all mean "no graph"
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise TraceError(f"torch.export failed with {type(e).__name__}: "
                         f"{lines[0][:200] if lines else ''} (pass an example_input the model "
                         "accepts; data-dependent control flow cannot be traced)") from e
    finally:
        for m, training in modes:
            m.training = training


class Producers:
    """Walks a traced graph from a consumer layer back to its producer."""

    def __init__(self, model: nn.Module, graph: fx.Graph):
        self.model = model
        self.calls: dict[str, list[fx.Node]] = {}  # module path → its layer/norm op nodes
        for node in graph.nodes:
            if node.op == "call_function" and node.target in LAYER_OPS | NORMS:
                path = _module_path(node)
                if path is not None:
                    self.calls.setdefault(path, []).append(node)
        counts: dict[int, int] = {}
        for _, p in model.named_parameters(remove_duplicate=False):
            counts[id(p)] = counts.get(id(p), 0) + 1
        self.shared = {i for i, n in counts.items() if n > 1}

    def chain(self, consumer: str) -> Chain:
        layer = self.model.get_submodule(consumer)
        why = self._single_call(consumer)
        why = f"'{consumer}' {why}" if why else self._tied(consumer, "consumer")
        if why:
            return Chain(reason=why)
        x, chain = self.calls[consumer][0].args[0], Chain()
        while chain.reason is None and chain.producer is None:
            x = self._step(x, chain)
        if chain.producer is not None:
            chain.reason = self._check_producer(chain, layer)
            chain.producer = None if chain.reason else chain.producer
        chain.through.reverse()
        chain.norms.reverse()
        return chain

    def _single_call(self, path: str) -> str | None:
        n = len(self.calls.get(path, []))
        if n != 1:
            return f"runs {n} times in the traced graph (shared or unused module)"
        return None

    def _step(self, x: Any, chain: Chain) -> Any:
        """Classify ``x``; record it on ``chain``; return the next node to look at."""
        if not isinstance(x, fx.Node) or x.op != "call_function":
            chain.reason = f"input comes from {getattr(x, 'op', type(x).__name__)} " \
                           f"'{getattr(x, 'name', x)}', not from a Linear/Conv2d"
            return x
        where = _module_path(x) or "the top-level forward"
        users = [u for u in x.users if not str(u.target).startswith("aten._assert")]
        if len(users) != 1:
            names = ", ".join(f"{u.name} in '{_module_path(u) or '-'}'" for u in users)
            chain.reason = f"'{x.name}' in '{where}' has {len(users)} users ({names}): " \
                           "its channels are needed elsewhere"
        elif x.target in LAYER_OPS:
            chain.producer = where
            chain.norm_first = bool(chain.norms) and chain.through[-1] == chain.norms[-1]
        elif x.target in NORMS:
            chain.reason = self._norm_reason(where)
            chain.norms.append(where)
            chain.through.append(where)
            chain.dim1_ranks.append(_rank(x))
        elif x.target in ELEMENTWISE and _only_first_is_tensor(x) or x.target in POOLS:
            chain.through.append(x.target.__name__.split(".")[0].rstrip("_"))
            chain.dim1_ranks += [_rank(x)] if x.target in POOLS else []
        elif _is_flatten_1x1(x) and not chain.flattened:
            chain.through.append("flatten")
            chain.flattened = True
        else:
            chain.reason = f"'{x.name}' ({x.target}) in '{where}' may mix channels; " \
                           "compaction stops there"
        return x.args[0] if chain.reason is None and chain.producer is None else x

    def _check_producer(self, chain: Chain, consumer: nn.Module) -> str | None:
        path = chain.producer
        try:
            producer = self.model.get_submodule(path)
        except AttributeError:
            return f"producer op in '{path}' is not a module call"
        kinds = type_before_parametrizations(producer), type_before_parametrizations(consumer)
        if not isinstance(producer, (nn.Linear, nn.Conv2d)):
            return f"producer op in '{path}' runs inside a {kinds[0].__name__}, not a layer"
        convs = isinstance(producer, nn.Conv2d), isinstance(consumer, nn.Conv2d)
        if convs[0] != convs[1] and not chain.flattened or chain.flattened and convs != (
                True, False):
            return f"producer '{path}' is {kinds[0].__name__}, the consumer " \
                   f"{kinds[1].__name__}: their channel axes differ"
        if not convs[0] and any(r != 2 for r in chain.dim1_ranks):
            return f"an op between '{path}' and the consumer works on dim 1, the Linear's " \
                   "features are the last dim"
        if isinstance(producer, nn.Conv2d) and producer.groups != 1:
            return f"producer '{path}' is a grouped conv (groups={producer.groups})"
        why = self._single_call(path)
        if why:
            return f"producer '{path}' {why}"
        return self._tied(path, "producer")

    def _tied(self, path: str, role: str) -> str | None:
        if any(id(p) in self.shared for p in self.model.get_submodule(path).parameters()):
            return f"{role} '{path}' shares (ties) its parameters with another module"
        return None

    def _norm_reason(self, path: str) -> str | None:
        try:
            norm = self.model.get_submodule(path)
        except AttributeError:
            norm = None
        if not isinstance(norm, NORM_TYPES):
            return f"functional batch_norm in '{path}' (not a BatchNorm module)"
        why = self._single_call(path)
        return f"BatchNorm '{path}' {why}" if why else None


def _rank(node: fx.Node) -> int:
    val = node.meta.get("val")
    return -1 if val is None else val.dim()


def _is_flatten_1x1(node: fx.Node) -> bool:
    """``[B, C, 1, …, 1] → [B, C]``: channels stay channels (view, reshape, flatten...)."""
    if node.target not in RESHAPES or any(isinstance(a, fx.Node) for a in node.args[1:]):
        return False
    src = node.args[0]
    before = src.meta.get("val") if isinstance(src, fx.Node) else None
    after = node.meta.get("val")
    if before is None or after is None or not hasattr(after, "shape") or before.dim() < 3:
        return False
    return tuple(after.shape) == tuple(before.shape[:2]) and \
        all(d == 1 for d in before.shape[2:])


def _only_first_is_tensor(node: fx.Node) -> bool:
    rest = list(node.args[1:]) + list(node.kwargs.values())
    return all(a is None or isinstance(a, (numbers.Number, str, bool, torch.dtype,
                                           torch.device, torch.layout, torch.memory_format))
               for a in rest)


