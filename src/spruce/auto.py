"""``convert(model, backend="auto", example_input=x)``: per-layer measured choice.

For every masked layer, every backend that can serve its mask (dense always) is built and
timed on this device and dtype, on the input shape the layer really sees (captured with
hooks in one forward pass of ``example_input``); the fastest is kept, but a sparse path
must beat dense by ``margin`` so noise never picks a slower one. The whole converted model
is checked against the pruned one on ``example_input`` (layers that make it fail or differ
go back to dense, see ``backends.wholemodel``). Then it is timed against its dense twin on
inputs built from ``example_input`` itself (its rows rotated: same dtypes, ranges and
token ids, never invented ones); if it is slower, the layers with the smallest measured gain
go back to dense (all of them, if need be) and are reported. A pruned model is never
slower than dense on what was measured. With ``compile`` both are compiled by Inductor (and
replayed as CUDA graphs on a GPU), so the bar is compiled dense (``spruce.auto_model``).

Choices are cached in a plan file (JSON) keyed by device name, torch version, dtype,
layer and input shapes and a fingerprint of the mask, so converting the same model again
on the same machine takes no timing runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .backends.base import Backend, dtype_name, get_backend, names
from .backends.convert import (
    ConversionReport,
    LayerConversion,
    Target,
    _accepted,
    build_module,
    finish,
    option_names,
    prepare,
)
from .backends.dense import Dense
from .backends.wholemodel import bypass_reason
from .bench.env import device_name
from .bench.timing import make_inputs, time_fn
from .errors import SpruceError
from .fileformat import check_plan
from .io import atomic_write_text

PLAN_FORMAT = "spruce-plan/1"
WHOLE = "whole model"  # LayerChoice.errors key: why the whole-model check sent it back


@dataclass(frozen=True)
class AutoTiming:
    """How hard to time each candidate (see ``spruce.bench.time_fn``)."""

    warmup: int = 2            # untimed calls first
    min_runs: int = 10         # samples behind each median
    min_time_s: float = 0.05   # timed seconds per candidate, at least
    max_time_s: float = 0.5    # cap for very slow candidates (CSR on a GPU)
    abandon: float | None = 3.0  # a candidate whose probe call is this many times slower
    #                              than dense is not timed further (None: time everything)


@dataclass
class LayerChoice:
    name: str
    key: str                       # cache key: device, torch, dtype, shapes, mask
    view: list[int]                # (R, K) of the 2-D view
    input_shape: list[int] | None  # what the layer saw in example_input
    times_ms: dict[str, float] = field(default_factory=dict)  # candidate → median ms
    errors: dict[str, str] = field(default_factory=dict)      # candidate → why it failed
    choice: str = "dense"
    reverted: bool = False         # chosen, then sent back to dense by the model check
    probed: list[str] = field(default_factory=list)  # timed by one probe call only (slow)


@dataclass
class Plan:
    device_name: str
    torch: str
    dtype: str
    layers: dict[str, LayerChoice] = field(default_factory=dict)
    model_ms: dict[str, float] = field(default_factory=dict)  # "dense" / "auto" end to end

    def save(self, path: str | os.PathLike) -> Path:
        data = {"format": PLAN_FORMAT, **asdict(self)}
        return atomic_write_text(path, json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        """Read a plan file, checked field by field (a ``SpruceError`` naming the file, the
        layer and the field; delete the file to measure again)."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise SpruceError(f"plan file {path} is unreadable or corrupt ({e}); delete it "
                              "to measure again") from None
        check_plan(data, path, PLAN_FORMAT, names())
        data = {k: v for k, v in data.items() if k != "format"}
        layers = {n: LayerChoice(**c) for n, c in data.pop("layers").items()}
        return cls(**data, layers=layers)

    def fits(self, env: dict[str, str]) -> bool:
        return (self.device_name, self.torch, self.dtype) == \
            (env["device_name"], env["torch"], env["dtype"])


def mask_fingerprint(mask: torch.Tensor | None) -> str:
    if mask is None:
        return "none"
    data = np.packbits(mask.numpy()).tobytes() + str(tuple(mask.shape)).encode()
    return hashlib.sha1(data).hexdigest()[:16]


def layer_key(env: dict[str, str], t: Target, compiled: bool = False) -> str:
    """What a layer's choice depends on; ``compiled``: chosen for a compiled model (its
    candidates timed as CUDA graphs on a GPU, those torch.compile cannot trace left out),
    so an eager plan is not reused for it, nor the other way round."""
    shape = list(t.input_shape) if t.input_shape is not None else None
    return "|".join([env["device_name"], env["torch"], env["dtype"], type(t.layer).__name__,
                     str(list(t.layer.weight.shape)), str(shape), mask_fingerprint(t.mask)]
                    + (["channels_last"] if t.channels_last else [])
                    + (["compiled"] if compiled else []))


def candidates(t: Target, dtype: torch.dtype, device: torch.device,
               options: dict[str, Any]) -> list[type[Backend]]:
    """Dense, and every available backend meant for the layer's pattern that can serve it."""
    found: list[type[Backend]] = [Dense]
    for name in names():
        b = get_backend(name)
        if b is Dense or b.unavailable() or dtype not in b.dtypes_on(device.type):
            continue
        if t.patterns and not set(t.patterns) & set(b.patterns):
            continue
        if b.reason(t.layer, t.mask, dtype, device, **_accepted(b.reason, options)) is None:
            found.append(b)
    return found


def _time(fn, example: Any, dtype: torch.dtype, device: torch.device, timing: AutoTiming,
          probe: bool = False, inputs: list | None = None, graph: bool = False) -> float:
    """Median ms of ``fn`` on random inputs shaped like ``example`` (``inputs``: already
    made, shared by the candidates of a shape); ``probe``: one warm-up and one timed call,
    enough to tell a path many times slower than dense; ``graph``: replayed as a CUDA
    graph (launch costs gone, as in a compiled model)."""
    inputs = inputs if inputs is not None else make_inputs(example, dtype=dtype, device=device)
    call = (lambda x: fn(**x)) if isinstance(inputs[0], dict) else \
        (lambda x: fn(*x)) if isinstance(inputs[0], tuple) else fn
    if probe:
        return time_fn(call, inputs, device=device, warmup=1, min_runs=1,
                       min_time_s=0.0).median_ms
    return time_fn(call, inputs, device=device, warmup=timing.warmup, min_runs=timing.min_runs,
                   min_time_s=timing.min_time_s, max_time_s=timing.max_time_s,
                   cuda_graph=graph and device.type == "cuda").median_ms


_INPUT_CACHE_BYTES = 2 << 30


def _inputs_for(cache: dict[tuple, list], shape: tuple, dtype, device,
                channels_last: bool = False) -> list:
    """Random inputs of ``shape`` (in the layout the layer saw), drawn once per shape
    (several layers share one); the oldest shapes are dropped past 2 GiB."""
    key = (shape, channels_last)
    if key not in cache:
        cache[key] = make_inputs(shape, dtype=dtype, device=device)
        if channels_last:
            cache[key] = [x.contiguous(memory_format=torch.channels_last) for x in cache[key]]
        while len(cache) > 1 and sum(x.numel() * x.element_size() for b in cache.values()
                                     for x in b) > _INPUT_CACHE_BYTES:
            del cache[next(iter(cache))]
    return cache[key]


def _measure(t: Target, choice: LayerChoice, dtype, device, options, timing: AutoTiming,
             margin: float, inputs: list, graph: bool = False,
             compiled: bool = False) -> dict[str, nn.Module]:
    """Build and time every candidate (dense first); set ``choice``; return the built
    modules. A candidate whose probe call is ``timing.abandon`` × slower than dense keeps
    that probe time (listed in ``choice.probed``) — it cannot win by a margin.
    ``compiled``: the model will run compiled, so a backend torch.compile cannot trace is
    left out (each such layer would split the graph), its reason kept in ``choice.errors``."""
    built: dict[str, nn.Module] = {}
    shape = tuple(t.input_shape)
    for b in candidates(t, dtype, device, options):
        if compiled and b.graph_break:
            choice.errors[b.name] = f"left out for a compiled model: {b.graph_break}"
            continue
        try:
            built[b.name] = build_module(b, t, options)
            dense = choice.times_ms.get("dense")
            if dense is not None and timing.abandon is not None:
                first = _time(built[b.name], shape, dtype, device, timing, probe=True,
                              inputs=inputs)
                if first > timing.abandon * dense:
                    choice.times_ms[b.name] = first
                    choice.probed.append(b.name)
                    continue
            choice.times_ms[b.name] = _time(built[b.name], shape, dtype, device, timing,
                                            inputs=inputs, graph=graph)
        except (RuntimeError, ValueError, NotImplementedError) as e:
            choice.errors[b.name] = f"{type(e).__name__}: {e}"
            built.pop(b.name, None)
    choice.choice = pick(choice.times_ms, margin)
    return built


def pick(times_ms: dict[str, float], margin: float) -> str:
    """The fastest candidate; a sparse one only if it beats dense by ``margin``."""
    dense = times_ms["dense"]
    best = min(times_ms, key=times_ms.get)
    return best if times_ms[best] < dense * (1 - margin) else "dense"


def _cached_plan(plan: str | os.PathLike | None, env: dict[str, str]) -> Plan | None:
    if plan is None or not Path(plan).exists():
        return None
    cached = Plan.load(plan)
    if not cached.fits(env):
        warnings.warn(f"plan {plan} was measured on {cached.device_name} / torch "
                      f"{cached.torch} / {cached.dtype}; this is {env['device_name']} / torch "
                      f"{env['torch']} / {env['dtype']}: measuring again", stacklevel=3)
        return None
    return cached


def _check_plan_choice(plan, t: Target, choice: LayerChoice, dtype, device, options) -> None:
    """A cached choice must be a backend that serves this layer as it is now."""
    b = get_backend(choice.choice)
    why = None if b is Dense else (
        b.unavailable() or b.reason(t.layer, t.mask, dtype, device,
                                    **_accepted(b.reason, options)))
    if why:
        raise SpruceError(f"chooses {b.name}, which cannot serve this layer ({why}); the plan "
                          "was edited or made for another model — delete it to measure again",
                          path=plan, layer=t.name, field="choice")


def _check_plan_shapes(cached: Plan, targets: list[Target], plan_path) -> None:
    by_name = {t.name: t for t in targets}
    for name, c in cached.layers.items():
        t = by_name.get(name)
        if t is not None and list(c.view) != [t.layer.weight.shape[0],
                                              t.layer.weight[0].numel()]:
            raise SpruceError(f"layer '{name}' has view {c.view} there but "
                              f"{[t.layer.weight.shape[0], t.layer.weight[0].numel()]} in the "
                              "model; it was made for another model — delete it or pass "
                              "another --plan", path=plan_path, field="view")


def _check_auto_options(options: dict[str, Any]) -> None:
    """An option no candidate backend reads is a typo: refuse it, naming the valid ones."""
    valid = set().union(*(option_names(get_backend(n)) for n in names()))
    unknown = sorted(set(options) - valid)
    if unknown:
        raise SpruceError(f"backend 'auto' has no option {', '.join(map(repr, unknown))}; "
                          f"the candidates' options: {', '.join(sorted(valid))}",
                          field=unknown[0])


def convert_auto(model: nn.Module, dtype: torch.dtype | None = None, example_input: Any = None,
                 verify: bool = True, plan: str | os.PathLike | None = None,
                 margin: float = 0.05, timing: AutoTiming | None = None,
                 check_model: bool = True, compile: bool | str = False,
                 **options: Any) -> nn.Module:
    """See the module docstring. ``plan``: a JSON path to reuse and (re)write.
    ``compile``: the model will run compiled (see :mod:`spruce.compiled`): on a GPU each
    candidate is timed as a CUDA graph, and the whole-model check compiles both models."""
    from .auto_model import check_model as whole_model_check
    from .compiled import compile_mode

    mode = compile_mode(compile)
    if example_input is None:
        raise ValueError("backend='auto' needs example_input: it times each candidate backend "
                         "on the input shape every layer really sees, on this device and dtype")
    _check_auto_options(options)
    timing = timing or AutoTiming()
    new, device, dtype, targets = prepare(model, dtype, example_input,
                                          options.get("groups_from", "mask"))
    graph = mode is not None and device.type == "cuda"  # candidates timed as CUDA graphs
    env = {"device_name": device_name(device), "torch": torch.__version__,
           "dtype": dtype_name(dtype)}
    cached = _cached_plan(plan, env)
    if cached is not None:
        _check_plan_shapes(cached, targets, plan)
    result = Plan(**env, model_ms=dict(cached.model_ms) if cached else {})
    modules: dict[str, nn.Module] = {}
    sparse: dict[str, tuple[str, nn.Module]] = {}  # compiled: each layer's fastest sparse
    inputs: dict[tuple, list] = {}  # random inputs by shape, drawn once (on the CPU: slow)
    measured = False
    for t in targets:
        choice = LayerChoice(t.name, layer_key(env, t, mode is not None),
                             [t.layer.weight.shape[0], t.layer.weight[0].numel()],
                             list(t.input_shape) if t.input_shape is not None else None)
        old = cached.layers.get(t.name) if cached else None
        if old is not None and old.key == choice.key:
            choice = old
            _check_plan_choice(plan, t, choice, dtype, device, options)
            modules[t.name] = build_module(get_backend(choice.choice), t, options)
        elif t.input_shape is None or bypass_reason(new, t.name):
            choice.errors["*"] = bypass_reason(new, t.name) or \
                "not reached by example_input: left dense"
            modules[t.name] = build_module(Dense, t, options)
        else:
            built = _measure(t, choice, dtype, device, options, timing, margin,
                             _inputs_for(inputs, tuple(t.input_shape), dtype, device,
                                         t.channels_last), graph, mode is not None)
            modules[t.name] = built[choice.choice]
            measured = True
            if mode is not None:
                sparse.update(_fastest_sparse(t.name, choice, built))
        result.layers[t.name] = choice
    fast = _assemble(new, targets, modules, result, dtype, device, verify, example_input)
    _sync_sent_back(fast, result, targets, modules, options)
    if check_model and measured:  # a plan reused whole was checked when it was made
        fast = whole_model_check(model, fast, targets, modules, result, dtype, device,
                                 verify, example_input, timing, options, mode, sparse)
    if plan is not None:
        result.save(plan)
    fast.spruce_plan = result
    return fast


def _fastest_sparse(name: str, choice: LayerChoice, built: dict[str, nn.Module]
                    ) -> dict[str, tuple[str, nn.Module]]:
    """{name: (backend, module)} of the layer's fastest sparse candidate that was fully
    timed (none: {}). A compiled model may fuse what a layer timed alone pays for (the
    gather of kept columns into the kernel that produced them), so the whole-model check
    also tries these."""
    timed = {b: ms for b, ms in choice.times_ms.items()
             if b != "dense" and b in built and b not in choice.probed}
    if not timed:
        return {}
    best = min(timed, key=timed.get)
    return {name: (best, built[best])}


def _assemble(new, targets, modules, result: Plan, dtype, device, verify,
              example_input: Any = None) -> nn.Module:
    rows = {t.name: LayerConversion(t.name, t.kind, "+".join(t.patterns) or "-",
                                    result.layers[t.name].choice,
                                    result.layers[t.name].errors.get(WHOLE)
                                    if result.layers[t.name].choice == "dense" else None)
            for t in targets}
    report = ConversionReport("auto", dtype_name(dtype), str(device))
    return finish(new, targets, modules, rows, report, dtype, device, verify, example_input)


def _sync_sent_back(fast: nn.Module, result: Plan, targets, modules, options) -> None:
    """Layers the whole-model check sent back to dense are dense in the plan too."""
    by_name = {t.name: t for t in targets}
    for row in fast.spruce_report.rows:
        c = result.layers[row.name]
        if row.reason is not None and c.choice != "dense":
            c.errors[WHOLE] = f"{c.choice}: {row.reason}"
            c.choice, c.reverted = "dense", True
            modules[row.name] = build_module(Dense, by_name[row.name], options)
