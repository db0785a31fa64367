"""Checking a checkpoint before a run resumes from it, and the weights before one is written.

A checkpoint folder may be damaged (a truncated file, an edited ``state.json``) or may hold
weights that are no longer numbers. :func:`check_state` checks every field the loop reads,
by name, type and range; :func:`loading` turns whatever a damaged tensor file raises into
a :class:`SpruceError` naming the file; :func:`first_nonfinite` finds a NaN/inf tensor so
that such a state is never written as a checkpoint nor resumed from.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SpruceError

REMEDY = "resume from an earlier checkpoint (delete this folder) or start a new run"


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and v == v


def _bad(file: Path, name: str, why: str) -> SpruceError:
    err = SpruceError(f"{file}: field '{name}' {why}; {REMEDY}")
    err.path, err.field = str(file), name
    return err


# field: (required?, test, what it must be)
FIELDS: dict[str, tuple[bool, Callable[[Any], bool], str]] = {
    "step": (True, lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "optimizer": (True, lambda v: isinstance(v, dict) and "__dict__" in v,
                  "the optimizer's state (an object with '__dict__')"),
    "rng": (True, lambda v: isinstance(v, list) and len(v) > 0 and all(map(_rng_ok, v)),
            "a non-empty list of RNG states, each with 'torch', 'numpy' and 'python'"),
    "fingerprint": (True, lambda v: isinstance(v, dict), "an object (the run's settings)"),
    "signature": (True, lambda v: isinstance(v, list), "a list of [name, shape] pairs"),
    "epoch": (False, lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "steps_per_epoch": (False, lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "wall_s": (False, lambda v: _is_num(v) and v >= 0, "a number of seconds >= 0"),
    "samples": (False, lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "history": (False, lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
                "a list of objects (evaluation rows)"),
    "scaler": (False, lambda v: v is None or isinstance(v, dict), "null or an object"),
    "world_size": (False, lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "hooks": (False, lambda v: v is None or isinstance(v, dict), "null or an object"),
}


def _rng_ok(r: Any) -> bool:
    return (isinstance(r, dict) and isinstance(r.get("torch"), str)
            and isinstance(r.get("numpy"), list) and len(r["numpy"]) == 5
            and isinstance(r.get("python"), list) and len(r["python"]) == 3)


def check_state(state: Any, file: Path, total_steps: int | None = None) -> dict[str, Any]:
    """``state`` (parsed ``state.json``) if every field is present and in range."""
    if not isinstance(state, dict):
        raise SpruceError(f"{file}: holds a JSON {type(state).__name__}; a checkpoint state "
                          f"is an object with step, optimizer, rng, ...; {REMEDY}")
    for name, (required, ok, what) in FIELDS.items():
        if name not in state:
            if required:
                raise _bad(file, name, f"is missing (it must be {what})")
            continue
        if not ok(state[name]):
            raise _bad(file, name, f"must be {what}; got {_short(state[name])}")
    if total_steps is not None and state["step"] > total_steps:
        raise _bad(file, "step", f"is {state['step']}, past the run's {total_steps} steps")
    return state


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


@contextmanager
def loading(file: Path, what: str) -> Iterator[None]:
    """Whatever reading ``file`` raises becomes a SpruceError naming it."""
    try:
        yield
    except SpruceError:
        raise
    except Exception as e:  # safetensors, torch and JSON raise their own types
        raise SpruceError(f"{file}: cannot restore the {what} ({type(e).__name__}: "
                          f"{str(e)[:200]}); {REMEDY}") from None


def first_nonfinite(tensors: Iterator[tuple[str, torch.Tensor]]) -> str | None:
    """Name of the first floating tensor holding NaN or inf, else None."""
    for name, t in tensors:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def model_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from model.named_parameters()
    yield from model.named_buffers()
