"""The converted model as a whole: layers read around, shared layers, one full run.

Checking each layer alone misses what code around a layer does with it: a parent that
reads ``layer.weight`` instead of calling the layer (``nn.MultiheadAttention`` hands
``out_proj.weight``/``bias`` to ``F.multi_head_attention_forward``) bypasses the backend
module; a layer registered under two names must become one module under both. When an
example input is given, the converted model runs once and is compared with the pruned
model; layers that make it fail or differ go back to dense with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..masks import set_submodule

# parent type → child names its forward reads the weight of, without calling the child
BYPASSING_PARENTS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.MultiheadAttention: ("out_proj",),
}


def bypass_reason(model: nn.Module, name: str) -> str | None:
    """Why converting layer ``name`` would be bypassed by its parent, or None."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    for kind, children in BYPASSING_PARENTS.items():
        if isinstance(parent, kind) and attr in children:
            return (f"its parent {type(parent).__name__} reads {attr}.weight/bias directly "
                    f"instead of calling {attr}, so a backend module would be bypassed; "
                    f"kept dense")
    return None


def aliases(model: nn.Module) -> dict[str, list[str]]:
    """For each module registered under several names: first name → the other names."""
    first: dict[int, str] = {}
    found: dict[str, list[str]] = {}
    for name, mod in model.named_modules(remove_duplicate=False):
        if id(mod) in first:
            found.setdefault(first[id(mod)], []).append(name)
        else:
            first[id(mod)] = name
    return found


def swap(model: nn.Module, name: str, module: nn.Module, alias: dict[str, list[str]]) -> None:
    """Put ``module`` at ``name`` and at every other name of the same layer."""
    for n in [name, *alias.get(name, [])]:
        set_submodule(model, n, module)


def run(model: nn.Module, example: Any) -> Any:
    with torch.no_grad():
        if isinstance(example, dict):
            return model(**example)
        if isinstance(example, tuple):
            return model(*example)
        return model(example)


def tensors_of(out: Any) -> list[torch.Tensor]:
    """The tensors in a model output (tensor, tuple/list, dict or HF ``ModelOutput``)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in tensors_of(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in tensors_of(v)]
    return []


def mismatch(out: Any, ref: list[torch.Tensor], tol: float) -> str | None:
    """How ``out`` differs from the reference tensors ``ref``, or None if it does not."""
    got = tensors_of(out)
    if len(got) != len(ref):
        return f"returns {len(got)} tensors instead of {len(ref)}"
    for i, (a, b) in enumerate(zip(got, ref, strict=True)):
        if a.shape != b.shape:
            return f"output {i} has shape {tuple(a.shape)} instead of {tuple(b.shape)}"
        if not b.is_floating_point():
            if not torch.equal(a, b):
                return f"output {i} (integer) differs"
            continue
        a, b = a.double(), b.double()
        err = float((a - b).norm() / b.norm().clamp_min(1e-12))
        if not err <= tol:  # also NaN
            return f"output {i} differs from the pruned model (relative error {err:.1e} > " \
                   f"{tol:.0e})"
    return None


def failure(model: nn.Module, example: Any, ref: list[torch.Tensor], tol: float) -> str | None:
    """Why one forward of ``model`` fails or differs from ``ref``, or None."""
    try:
        return mismatch(run(model, example), ref, tol)
    except Exception as e:  # any error of any layer: the check's whole point
        return f"the model fails with {type(e).__name__}: {str(e).splitlines()[0][:200]}"


def model_tolerance(dtype: torch.dtype) -> float:
    """Normwise relative error allowed between converted and pruned model outputs."""
    return 5e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-3


def culprits(names: list[str], fails: Callable[[list[str]], str | None]
             ) -> dict[str, str]:
    """The layers among ``names`` whose conversion makes ``fails(converted)`` say why:
    bisection over the converted set (the rest stays dense). Returns layer → reason."""
    why = fails(names)
    if why is None:
        return {}
    if len(names) == 1:
        return {names[0]: why}
    mid = math.ceil(len(names) / 2)
    found = {**culprits(names[:mid], fails), **culprits(names[mid:], fails)}
    return found or {n: why for n in names}  # fails only together: all of them


def check_whole_model(model: nn.Module, example: Any, ref: list[torch.Tensor],
                      fast: dict[str, nn.Module], dense: dict[str, nn.Module],
                      dtype: torch.dtype) -> dict[str, str]:
    """Run ``model`` (its layers in ``fast`` converted) on ``example`` against ``ref``;
    layers that make it fail go back to their ``dense`` module. Returns layer → reason."""
    alias = aliases(model)
    tol = model_tolerance(dtype)

    def fails(converted: list[str]) -> str | None:
        on = set(converted)
        for n in fast:
            swap(model, n, fast[n] if n in on else dense[n], alias)
        return failure(model, example, ref, tol)

    found = culprits(list(fast), fails)
    kept = [n for n in fast if n not in found]
    if found and kept and fails(kept) is not None:  # the rest still fails: all dense
        found.update({n: "sent back with the others: the model still failed" for n in kept})
        kept = []
    for n in fast:
        swap(model, n, fast[n] if n in kept else dense[n], alias)
    return found


def drop_aliases(state: dict[str, torch.Tensor], alias: dict[str, list[str]]
                 ) -> dict[str, torch.Tensor]:
    """``state`` without the entries of a layer's other names (a shared layer saved once)."""
    others = tuple(f"{o}." for names in alias.values() for o in names)
    return {k: v for k, v in state.items() if not k.startswith(others)} if others else state


def fill_aliases(state: dict[str, torch.Tensor], alias: dict[str, list[str]]) -> None:
    """Give a shared layer's other names the entries saved under its first name."""
    for first, others in alias.items():
        for k in [k for k in state if k.startswith(first + ".")]:
            for o in others:
                state.setdefault(o + k[len(first):], state[k])
