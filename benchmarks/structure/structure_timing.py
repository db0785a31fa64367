"""The timed paths of the structure benchmark, each returning its median and its output.

- ``eager``: ``spruce.bench.time_fn`` over rotating input buffers (``do_bench`` medians
  with device events and L2 flushes on CUDA; ``torch.utils.benchmark`` on the CPU);
- ``graph`` (CUDA): one CUDA graph holding one call per input buffer, replayed under
  ``triton.testing.do_bench``; the time of a replay divided by the calls it holds;
- ``compiled``: ``torch.compile(model, dynamic=False)`` (compiled once; the first call,
  which compiles, is timed apart as ``compile_s``), then the graph path on CUDA or the
  eager path on the CPU.

Every path returns the output it produced for ``inputs[0]`` (on CUDA graphs: the output
the replayed graph wrote), so the error of exactly what was timed can be checked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from spruce.bench import time_fn
from structure_metrics import call, first_tensor
from structure_profile import kernel_split


@dataclass(frozen=True)
class Plan:
    """Where and how long to time."""

    device: torch.device
    min_runs: int
    min_time_s: float
    warmup: int = 3
    profile: bool = False         # also split kernel time by class (torch.profiler)
    compile: bool = True          # False: the compiled paths are skipped (quick dry runs)


@dataclass
class Measured:
    ms: float
    output: torch.Tensor          # fp32 copy of the output for inputs[0]
    method: str                   # "do_bench" | "cuda-graph" | "torch.utils.benchmark"
    compile_s: float | None = None
    split: dict[str, float] | None = field(default=None)  # kernel ms by class, per call


def _output(fn: Callable[[Any], Any], x: Any) -> torch.Tensor:
    with torch.inference_mode():
        return first_tensor(fn(x)).detach().float().clone()


def _split(fn: Callable[[Any], Any], inputs: list, plan: Plan) -> dict[str, float] | None:
    return kernel_split(fn, inputs[0], plan.device) if plan.profile else None


def eager(model: nn.Module, inputs: list, plan: Plan) -> Measured:
    fn = lambda x: call(model, x)  # noqa: E731
    t = time_fn(fn, inputs, device=plan.device, warmup=plan.warmup, min_runs=plan.min_runs,
                min_time_s=plan.min_time_s)
    return Measured(t.median_ms, _output(fn, inputs[0]), t.method,
                    split=_split(fn, inputs, plan))


def graph(fn: Callable[[Any], Any], inputs: list, plan: Plan) -> Measured:
    """One CUDA graph of ``fn`` on every input buffer, captured after a warm-up on a side
    stream (lazy initialisation and autotuning happen there, as torch's docs advise)."""
    from triton.testing import do_bench

    with torch.inference_mode():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(plan.warmup):
                for x in inputs:
                    fn(x)
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            outs = [fn(x) for x in inputs]
        g.replay()
        torch.cuda.synchronize()
        out = first_tensor(outs[0]).detach().float().clone()
        ms = do_bench(g.replay, warmup=25, rep=max(100, int(plan.min_time_s * 1e3)),
                      return_mode="median")
    del g, outs
    return Measured(float(ms) / len(inputs), out, "cuda-graph")


def compiled(model: nn.Module, inputs: list, plan: Plan) -> Measured | None:
    """torch.compile (+ a CUDA graph on CUDA); None when the plan compiles nothing.
    Dynamo's caches are reset first, so every model compiles fresh for its own static
    shapes."""
    if not plan.compile:
        return None
    torch._dynamo.reset()
    fast = torch.compile(model, dynamic=False)
    fn = lambda x: call(fast, x)  # noqa: E731
    t0 = time.perf_counter()
    with torch.inference_mode():
        fn(inputs[0])
    if plan.device.type == "cuda":
        torch.cuda.synchronize()
    compile_s = time.perf_counter() - t0
    if plan.device.type == "cuda":
        m = graph(fn, inputs, plan)
    else:
        t = time_fn(fn, inputs, device=plan.device, warmup=plan.warmup,
                    min_runs=plan.min_runs, min_time_s=plan.min_time_s)
        m = Measured(t.median_ms, _output(fn, inputs[0]), t.method)
    m.compile_s = compile_s
    m.split = _split(fn, inputs, plan)
    return m
