"""``auto``'s whole-model check: the converted model timed against its dense twin, both run
the way the user will run them (eagerly, or compiled by Inductor and replayed as a CUDA
graph on a GPU), on inputs built from ``example_input`` itself. While the converted model
is slower, the sparse layers with the least measured gain go back to dense, half at a
time; compiled, each round costs a compilation, so after ``COMPILED_ROUNDS`` rounds the
rest go back at once. What is handed back is never slower than dense on what was measured.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .backends.convert import build_module, cast_input, prepare
from .backends.dense import Dense
from .backends.wholemodel import model_tolerance
from .bench.timing import rotation_size

COMPILED_ROUNDS = 2   # compiled: halve the sparse layers at most this often, then all dense


def example_batches(example: Any, dtype: torch.dtype, device: torch.device) -> list:
    """Inputs to time a whole model on, built from ``example`` itself: copies whose rows
    (dim 0, when every tensor shares it) are rotated, so the buffers differ while dtypes,
    value ranges and token ids stay the user's."""
    x = cast_input(example, dtype, device)
    leaves = [t for t in _leaves(x) if isinstance(t, torch.Tensor)]
    rows = {t.shape[0] for t in leaves if t.dim() > 0}
    nbytes = sum(t.numel() * t.element_size() for t in leaves)
    n = rotation_size(nbytes, device)
    shift = rows.pop() if len(rows) == 1 and all(t.dim() > 0 for t in leaves) else 1
    # empty_like keeps the example's layout (channels-last stays channels-last), so the
    # compiled models are timed on, and compiled for, the strides the user's inputs have
    return [_map(x, lambda t, i=i: torch.empty_like(t).copy_(t.roll(i % shift, 0)))
            for i in range(n)]


def _leaves(x: Any) -> list:
    if isinstance(x, dict):
        return [v for y in x.values() for v in _leaves(y)]
    if isinstance(x, (tuple, list)):
        return [v for y in x for v in _leaves(y)]
    return [x]


def _map(x: Any, fn) -> Any:
    if isinstance(x, dict):
        return {k: _map(v, fn) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_map(v, fn) for v in x)
    return fn(x) if isinstance(x, torch.Tensor) else x


def check_model(model, fast, targets, modules, result, dtype, device, verify, example_input,
                timing, options, mode: str | None = None,
                sparse: dict[str, tuple[str, nn.Module]] | None = None) -> nn.Module:
    """Time the whole model against its dense twin (compiled with Inductor ``mode`` when
    given, and replayed as a CUDA graph on a GPU); while it is slower, send the half of the
    sparse layers with the least measured gain back to dense. Compiled, ``sparse`` (each
    layer's fastest sparse candidate) is tried too, as a whole: Inductor fuses work that a
    layer timed alone pays for, so it may win where the per-layer choices said dense.
    ``result`` (the plan) gets the end-to-end times and every change; the eager converted
    model is returned."""
    from .auto import WHOLE, _assemble, _time
    from .compiled import CompiledModule

    dense_modules = {t.name: build_module(Dense, t, options) for t in targets}
    example = cast_input(example_input, dtype, device)
    graph = mode is not None and device.type == "cuda"

    def rebuild(check: bool) -> nn.Module:
        new, _, _, ts = prepare(model, dtype, example_input, options.get("groups_from", "mask"))
        mods = {t.name: (dense_modules[t.name] if result.layers[t.name].choice == "dense"
                         else modules[t.name]) for t in ts}
        return _assemble(new, ts, mods, result, dtype, device, check)

    compiled: dict[int, CompiledModule] = {}

    def timed(m: nn.Module) -> float:
        run = m if mode is None else CompiledModule(m, mode, example, model_tolerance(dtype))
        if mode is not None:  # what is handed back may be one of these: not compiled twice
            compiled[id(m)] = run
        return _time(run, example_input, dtype, device, timing, inputs=inputs, graph=graph)

    def handed(m: nn.Module) -> nn.Module:
        """``m``, carrying its compiled twin when that was built (not compiled twice)."""
        if id(m) in compiled:
            m.__dict__["_spruce_compiled"] = compiled[id(m)]
        return m

    if mode is not None and not sparse and \
            all(c.choice == "dense" for c in result.layers.values()):
        return fast  # every layer dense already: it is its dense twin, nothing to compare

    saved = {n: c.choice for n, c in result.layers.items()}
    for c in result.layers.values():
        c.choice = "dense"
    dense_model = rebuild(check=False)
    for n, c in result.layers.items():
        c.choice = saved[n]
    inputs = example_batches(example_input, dtype, device)
    result.model_ms["dense"] = timed(dense_model)
    try:
        every_dense = all(c.choice == "dense" for c in result.layers.values())
        result.model_ms["auto"] = result.model_ms["dense"] if every_dense else timed(fast)
    except Exception as e:  # never hand back a model that failed: everything dense
        for c in result.layers.values():
            if c.choice != "dense":
                c.errors[WHOLE] = f"{c.choice}: timing the whole model failed with " \
                                  f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                c.reverted, c.choice = True, "dense"
        return rebuild(check=verify)
    if mode is not None and sparse:
        fast = _try_all_sparse(fast, sparse, modules, result, timed, rebuild, verify)
    sparse = [c for c in result.layers.values() if c.choice != "dense"]
    sparse.sort(key=lambda c: c.times_ms["dense"] - c.times_ms[c.choice])  # least gain first
    reverted, rounds = False, 0
    while sparse and result.model_ms["auto"] > result.model_ms["dense"]:
        rounds += 1
        last = mode is not None and rounds > COMPILED_ROUNDS
        half = sparse if last else sparse[:max(1, len(sparse) // 2)]
        why = "slower than dense as a whole model" + (" (compiled)" if mode else "")
        for c in half:
            c.reverted, c.choice = True, "dense"
            c.errors.setdefault(WHOLE, f"{why}: {result.model_ms['auto']:.3f} ms vs "
                                       f"{result.model_ms['dense']:.3f} ms")
        sparse, reverted = sparse[len(half):], True
        fast = rebuild(check=False)
        if not sparse:  # all dense: the dense twin's time
            result.model_ms["auto"] = result.model_ms["dense"]
            break
        result.model_ms["auto"] = timed(fast)
    return rebuild(check=verify) if reverted and verify else handed(fast)


def _try_all_sparse(fast, sparse, modules, result, timed, rebuild, verify) -> nn.Module:
    """Every layer on its fastest sparse candidate, timed as a whole (compiled); kept when
    it beats the per-layer choices (the plan records both times)."""
    before = {n: (c.choice, modules[n]) for n, c in result.layers.items()}
    if all(result.layers[n].choice == b for n, (b, _) in sparse.items()):
        return fast  # the per-layer choices are that already
    for n, (b, m) in sparse.items():
        result.layers[n].choice, modules[n] = b, m
    candidate = rebuild(check=verify)
    if any(r.reason is not None and r.backend == "dense" and result.layers[r.name].choice
           != "dense" for r in candidate.spruce_report.rows):  # the model check refused some
        for n, (b, m) in before.items():
            result.layers[n].choice, modules[n] = b, m
        return fast
    ms = timed(candidate)
    result.model_ms["all sparse"] = ms
    if ms < result.model_ms["auto"]:
        result.model_ms["per layer"] = result.model_ms["auto"]
        result.model_ms["auto"] = ms
        return candidate
    for n, (b, m) in before.items():
        result.layers[n].choice, modules[n] = b, m
    return fast
