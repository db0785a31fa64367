"""The one 2-D view of every prunable weight (DESIGN.md §1), and which layers have one.

A ``Linear`` weight is viewed as it is, ``[out, in]``. A ``Conv2d`` weight ``[O, C, kh, kw]``
is viewed as ``[O, C·kh·kw]`` with K ordered ``(c, kh, kw)`` — the im2col order, so column
``k`` of the view multiplies row ``k`` of ``F.unfold(x, ...)``; ``Conv1d`` ``[O, C, k]`` is
``[O, C·k]`` and ``Conv3d`` ``[O, C·kd·kh·kw]``. transformers' ``Conv1D`` (GPT-2) stores its
weight ``[in, out]``: its view is the transpose. This is the only module that knows how to
go from a layer to its view and back; patterns, criteria and backends speak the view alone.

How a layer type maps to the view is data: a :class:`LayerKind` in a small registry keyed by
the type (or, for optional libraries, its qualified name — nothing here imports them).
:func:`kind_of` finds a layer's kind through its class hierarchy, so subclasses (and the
classes ``torch.nn.utils.parametrize`` generates) are served too.

:func:`find_layers` walks a model: every module that holds weights is either a prunable
layer or listed in ``skipped`` with the reason. Weights are matched by identity, so a layer
reachable under two names is found once, and a parameter used by several modules (tied
weights) is seen once:

- shared by layers of one kind and view shape: the first is the layer pruned and the others
  are its ``followers`` — they get the same mask, so ``layer.weight`` is one tensor
  everywhere;
- shared with anything else (an ``nn.Embedding`` tied to an LM head, a layer of another
  kind or shape): every user stays dense with the reason ("shares its weight with
  embedding 'wte' (tied)"). Masking only the head would make the embedding read the
  unmasked weight and the head the masked one — a model that matches no pruned model;
  masking the embedding with a head's pattern prunes token rows by a matmul's criterion.
  Untie the weights (clone the head's) to prune the head.
"""

from __future__ import annotations

import math
import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize


def _reshape_view(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _reshape_back(view: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return view.reshape(shape)


def _kernel_taps(layer: nn.Module) -> int:
    return math.prod(layer.weight.shape[2:])


def _one_tap(layer: nn.Module) -> int:
    return 1


def _conv_skip(layer: nn.Module) -> str | None:
    if layer.groups != 1:
        return f"grouped/depthwise {type_name(layer)} (groups={layer.groups}) stays dense"
    return None


def _no_skip(layer: nn.Module) -> str | None:
    return None


@dataclass(frozen=True)
class LayerKind:
    """How one layer type's ``weight`` maps to the 2-D view ``[R, K]``.

    ``to_view`` takes a tensor in the weight's own layout (the weight, its mask, its
    gradient) to the view; ``from_view`` takes a view back to a layout of ``shape`` (the
    weight's shape); ``taps`` is the number of view columns per input channel; ``skip``
    says why one layer of this type cannot be pruned in the view (or None).
    """

    name: str
    to_view: Callable[[torch.Tensor], torch.Tensor] = _reshape_view
    from_view: Callable[[torch.Tensor, torch.Size], torch.Tensor] = _reshape_back
    taps: Callable[[nn.Module], int] = _one_tap
    skip: Callable[[nn.Module], str | None] = _no_skip


_KINDS: dict[type | str, LayerKind] = {}


def register_kind(key: type | str, kind: LayerKind) -> LayerKind:
    """Teach spruce a layer type: ``key`` is the class, or its ``"module.QualName"`` for
    a class from an optional library. Returns ``kind``."""
    _KINDS[key] = kind
    return kind


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def kind_of(layer: nn.Module) -> LayerKind | None:
    """The registered kind of ``layer`` (through its class hierarchy), or None."""
    for cls in type(layer).__mro__:
        kind = _KINDS.get(cls) or _KINDS.get(_qualname(cls))
        if kind is not None:
            return kind
    return None


def type_name(layer: nn.Module) -> str:
    """The layer's class name (the user's class, not parametrize's generated one)."""
    cls = type(layer)
    return cls.__bases__[0].__name__ if cls.__name__.startswith("Parametrized") else cls.__name__


def _transpose(t: torch.Tensor) -> torch.Tensor:
    return t.t()


def _transpose_back(view: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return view.t().reshape(shape)


register_kind(nn.Linear, LayerKind("Linear"))
register_kind(nn.Conv1d, LayerKind("Conv1d", taps=_kernel_taps, skip=_conv_skip))
register_kind(nn.Conv2d, LayerKind("Conv2d", taps=_kernel_taps, skip=_conv_skip))
register_kind(nn.Conv3d, LayerKind("Conv3d", taps=_kernel_taps, skip=_conv_skip))
register_kind("transformers.pytorch_utils.Conv1D",
              LayerKind("Conv1D", to_view=_transpose, from_view=_transpose_back))

PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # the torch ones, for isinstance


def _kind(layer: nn.Module) -> LayerKind:
    kind = kind_of(layer)
    if kind is None:
        known = ", ".join(k if isinstance(k, str) else k.__name__ for k in _KINDS)
        raise TypeError(f"{type_name(layer)} has no 2-D weight view; known layer kinds: "
                        f"{known} (spruce.view.register_kind adds one)")
    return kind


def view_of(layer: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A tensor in ``layer``'s weight layout (weight, mask, gradient, score) → its 2-D view."""
    return _kind(layer).to_view(tensor)


def weight_shape(layer: nn.Module) -> torch.Size:
    """The shape of ``layer.weight`` without computing it (a masked weight is a product)."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original.shape
    return layer.weight.shape


def unview(layer: nn.Module, view: torch.Tensor) -> torch.Tensor:
    """A 2-D view → ``layer``'s weight layout (e.g. a mask to store on the layer)."""
    return _kind(layer).from_view(view, weight_shape(layer))


def layer_view(layer: nn.Module) -> torch.Tensor:
    """The current (masked, if parametrized) weight of ``layer`` as its 2-D view."""
    return view_of(layer, layer.weight)


def view_shape(layer: nn.Module) -> tuple[int, int]:
    """(R, K) of the layer's 2-D view: R output features/channels, K the reduction dim."""
    r, k = view_of(layer, torch.empty(weight_shape(layer), device="meta")).shape
    return int(r), int(k)


def taps(layer: nn.Module) -> int:
    """Columns of the view per input channel: ``kh·kw`` for a Conv2d, ``k`` for a Conv1d,
    1 for a Linear. Columns ``c·taps … (c+1)·taps - 1`` of the view are input channel ``c``.
    """
    return int(_kind(layer).taps(layer))


def skip_reason(layer: nn.Module) -> str | None:
    """Why a layer of a known kind cannot be pruned in the 2-D view, or None if it can."""
    kind = kind_of(layer)
    return None if kind is None else kind.skip(layer)


def to_view(weight: torch.Tensor) -> torch.Tensor:
    """Weight with the output dim first (Linear, Conv*) → its 2-D view (a view, no copy).

    Layout-blind: for a layer at hand prefer :func:`view_of`, which also knows the
    transposed layouts (``Conv1D``)."""
    return weight.reshape(weight.shape[0], -1)


def from_view(view: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A 2-D view → the shape of ``like`` (output dim first; see :func:`unview`)."""
    return view.reshape(like.shape)


# Layer types with weights that stay dense, and why (everything else that holds weights
# and has no kind is reported with a generic reason).
DENSE_REASONS: dict[type, str] = {
    nn.Embedding: "embedding (a lookup table, not a matmul) stays dense",
    nn.EmbeddingBag: "embedding (a lookup table, not a matmul) stays dense",
    nn.MultiheadAttention: "input projections (the packed in_proj_weight, or q/k/v_proj_weight) "
                           "stay dense; its out_proj is pruned as a Linear",
    nn.ConvTranspose1d: "transposed convolution stays dense",
    nn.ConvTranspose2d: "transposed convolution stays dense",
    nn.ConvTranspose3d: "transposed convolution stays dense",
}


def dense_reason(module: nn.Module, weights: list[str]) -> str:
    """Why a module that holds the weights ``weights`` but has no kind stays dense."""
    for cls in type(module).__mro__:
        if cls in DENSE_REASONS:
            return DENSE_REASONS[cls]
    return (f"{type_name(module)} holds weights ({', '.join(weights)}) but is not a layer "
            "kind spruce prunes; it stays dense (spruce.view.register_kind adds one)")


# -- which modules of a model are prunable layers ------------------------------------------

@dataclass(frozen=True)
class Skipped:
    """A module holding weights that stays dense, and why."""

    name: str
    reason: str


@dataclass
class FoundLayers:
    """What :func:`find_layers` found. ``layers`` are pruned (one entry per weight);
    ``followers[name]`` are the other modules using that layer's weight (they get its
    mask); ``shared[name]`` every other name that reads it (aliases of the module too)."""

    layers: dict[str, nn.Module]
    skipped: list[Skipped]
    followers: dict[str, list[nn.Module]]
    shared: dict[str, tuple[str, ...]]


def globs_of(exclude: str | Iterable[str] | None) -> tuple[str, ...]:
    """Module-name globs from one glob string or an iterable of them."""
    if exclude is None:
        return ()
    return (exclude,) if isinstance(exclude, str) else tuple(exclude)


def matches(name: str, globs: Iterable[str]) -> bool:
    """``name`` matches a glob, equals it, or lies under it (``"encoder"`` → ``"encoder.x"``)."""
    return any(fnmatch.fnmatchcase(name, g) or name == g or name.startswith(g + ".")
               for g in globs)


def held_weights(module: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters ``module`` holds itself; a parametrized tensor by its original(s)
    (``"weight"`` for spruce's masks, ``"weight.original0"``… for others)."""
    out = {n: p for n, p in module._parameters.items() if p is not None}
    if parametrize.is_parametrized(module):
        for t, plist in module.parametrizations.items():
            for n, p in plist.named_parameters(recurse=False):
                out[t if n == "original" else f"{t}.{n}"] = p
    return out


def _modules(model: nn.Module) -> tuple[dict[str, nn.Module], dict[int, list[str]]]:
    """Distinct modules by first name (parametrization internals left out), and every name
    of each module by its id."""
    inner: set[int] = set()
    for m in model.modules():
        if parametrize.is_parametrized(m):
            inner.update(id(x) for x in m.parametrizations.modules())
    first: dict[str, nn.Module] = {}
    names: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if id(m) in inner:
            continue
        if id(m) not in names:
            first[name] = m
        names.setdefault(id(m), []).append(name)
    return first, names


def _describe(name: str, module: nn.Module) -> str:
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return f"embedding '{name}'"
    return f"{type_name(module)} '{name}'"


def _tie_problem(me: nn.Module, group: list[tuple[str, nn.Module]], pid: int) -> str | None:
    """Why ``me`` cannot share one mask with the other users of its weight, or None."""
    others = [(n, f) for n, f in group if f is not me]
    for name, f in others:
        w = held_weights(f).get("weight")
        if kind_of(f) is None or w is None or id(w) != pid:
            return f"shares its weight with {_describe(name, f)} (tied)"
    for name, f in others:
        if kind_of(f) is not kind_of(me) or held_weights(f)["weight"].shape != me.weight.shape:
            return f"shares its weight with {_describe(name, f)}, whose 2-D view differs (tied)"
    return None


def _member_problem(m: nn.Module, group: list[tuple[str, nn.Module]], globs: tuple[str, ...],
                    names: dict[int, list[str]]) -> str | None:
    """Why the layer ``m`` (one user of a weight shared by ``group``) stays dense, or None."""
    if any(matches(n, globs) for n in names[id(m)]):
        return "excluded by the caller"
    hit = next((n for _, f in group for n in names[id(f)] if matches(n, globs)), None)
    if hit is not None:
        return f"shares its weight with '{hit}', which is excluded"
    reason = skip_reason(m)
    if reason is None and m.weight.numel() == 0:
        reason = f"empty weight (shape {tuple(m.weight.shape)}): nothing to prune"
    if reason is None and len(group) > 1:
        reason = _tie_problem(m, group, id(held_weights(m)["weight"]))
    return reason


def find_layers(model: nn.Module, exclude: str | Iterable[str] | None = ()) -> FoundLayers:
    """Prunable layers by first name, the modules with weights left dense and why, and the
    sharing of weights between modules (see the module docstring).

    ``exclude`` takes one module-name glob or several (``"classifier"``, ``"features.*"``,
    ``"*.fc"``); a plain name also excludes everything under it. A layer is excluded if any
    of its names matches.
    """
    globs = globs_of(exclude)
    first, names = _modules(model)
    users: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, m in first.items():
        for p in {id(p): p for p in held_weights(m).values()}.values():
            users.setdefault(id(p), []).append((name, m))
    found = FoundLayers({}, [], {}, {})
    for name, m in first.items():
        weights = held_weights(m)
        if kind_of(m) is None:
            big = [n for n, p in weights.items() if p.dim() >= 2]
            if big:
                found.skipped.append(Skipped(name, dense_reason(m, big)))
            continue
        w = weights.get("weight")
        group = users[id(w)] if w is not None else [(name, m)]
        layers = [(n, f) for n, f in group if kind_of(f) is not None]
        if layers[0][1] is not m:
            continue  # a later user of a shared weight: decided with the first one
        problems = {n: _member_problem(f, group, globs, names) for n, f in layers}
        first_problem = next(((n, r) for n, r in problems.items() if r is not None), None)
        if first_problem is not None:
            found.skipped.extend(Skipped(n, r or f"shares its weight with '{first_problem[0]}', "
                                         f"which stays dense: {first_problem[1]}")
                                 for n, r in problems.items())
            continue
        found.layers[name] = m
        found.followers[name] = [f for _, f in layers[1:]]
        found.shared[name] = tuple(n for _, f in layers for n in names[id(f)] if n != name)
    return found


def prunable_layers(model: nn.Module, exclude: str | Iterable[str] | None = ()
                    ) -> tuple[dict[str, nn.Module], list[Skipped]]:
    """Prunable layers by qualified name and the modules left dense with the reason
    (:func:`find_layers` without the sharing)."""
    found = find_layers(model, exclude)
    return found.layers, found.skipped


def module_types(model: nn.Module) -> list[str]:
    """Distinct leaf module type names (for 'no prunable layers' errors)."""
    seen: dict[str, None] = {}
    for mod in model.modules():
        if not list(mod.children()):
            seen[type(mod).__name__] = None
    return list(seen)
