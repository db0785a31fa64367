"""Latency of one callable: warm-up, rotation of inputs, the median of many timed runs.

    inputs = make_inputs((64, 768), dtype=torch.float16, device="cuda")
    t = time_fn(layer, inputs, device="cuda")          # Timing(median_ms=..., runs=...)

Every path yields one sample per run, so the median and the percentiles are of runs, not of
averages of blocks:

- CPU (``method="torch.utils.benchmark"``): each sample is one ``Timer.timeit(number)`` with
  ``number = 1`` unless one call takes under ``_MIN_SAMPLE_S`` (10 µs), where ``number``
  calls are grouped so the timer's own ~0.1 µs stays negligible; the sample is divided by
  ``number``. ``Timer.timeit`` itself runs two untimed calls before each timed one (torch's
  warm-up; they go on rotating), so the wall time is about three times the timed time.
- CUDA (``"do_bench"``): ``triton.testing.do_bench(..., return_mode="all")`` times every
  call with device events and flushes L2 between calls; without triton (``"events"``) each
  call is bracketed by CUDA events after a ``torch.cuda.synchronize()``.
- CUDA with ``cuda_graph=True`` (``"cuda-graph"``): one call per input buffer is captured in
  a ``torch.cuda.CUDAGraph``; each replay is one sample, divided by the calls it holds.

Runs go on until there are at least ``min_runs`` samples *and* ``min_time_s`` of timed time
(capped at ``MAX_RUNS`` samples).
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import benchmark

from ..backends.base import channels_last

MAX_RUNS = 10_000          # a cap on samples, for calls of a few µs under a long min_time_s
CAPPED_MIN_RUNS = 3        # samples kept at least when max_time_s cuts a slow case short
_MIN_SAMPLE_S = 10e-6      # CPU calls faster than this are timed in groups
_MAX_ROTATION_BYTES = 1 << 30  # never allocate more than 1 GiB of rotation buffers
_MAX_BUFFERS = 8


@dataclass
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    runs: int                   # number of samples the statistics are over
    method: str                 # "torch.utils.benchmark" | "do_bench" | "cuda-graph" | "events"
    calls_per_sample: int = 1   # >1 only for CPU calls under 10 µs, or a graph of several calls

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: how noisy the runs were."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms > 0 else math.nan

    @classmethod
    def from_samples(cls, samples_ms: list[float], method: str,
                     calls_per_sample: int = 1) -> Timing:
        if not samples_ms:
            raise ValueError(f"timing method {method!r} produced no samples")
        s = sorted(samples_ms)
        return cls(median_ms=_quantile(s, 0.5), p10_ms=_quantile(s, 0.1),
                   p90_ms=_quantile(s, 0.9), mean_ms=sum(s) / len(s), runs=len(s),
                   method=method, calls_per_sample=calls_per_sample)


def _quantile(sorted_xs: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    pos = q * (len(sorted_xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def time_fn(fn: Callable[[Any], Any], inputs: list, *, device: torch.device | str,
            warmup: int = 3, min_runs: int = 20, min_time_s: float = 0.2,
            threads: int | None = None, cuda_graph: bool = False,
            max_time_s: float | None = None) -> Timing:
    """Time ``fn(inputs[i % len(inputs)])``, i = 0, 1, 2, ... under ``torch.inference_mode()``.

    ``warmup`` untimed calls come first. ``threads`` (CPU only) defaults to
    ``torch.get_num_threads()``. ``max_time_s`` caps the timed seconds of very slow calls
    (a 3-second CSR call): sampling stops there once ``CAPPED_MIN_RUNS`` samples exist, and
    the Timing's ``runs`` says how many there are. See the module docstring.
    """
    if not inputs:
        raise ValueError("time_fn needs at least one input buffer; got an empty list")
    if min_runs < 1:
        raise ValueError(f"time_fn: min_runs must be >= 1; got {min_runs}")
    device = torch.device(device)
    step = _rotation(fn, inputs)
    with torch.inference_mode():
        if device.type == "cuda":
            with torch.cuda.device(device):
                if cuda_graph:
                    return _time_cuda_graph(fn, inputs, warmup, min_runs, min_time_s)
                for _ in range(warmup):
                    step()
                return _time_cuda(step, min_runs, min_time_s, max_time_s=max_time_s)
        if cuda_graph:
            raise ValueError(f"cuda_graph=True needs a CUDA device; got {device}")
        return _time_cpu(step, warmup, min_runs, min_time_s,
                         threads or torch.get_num_threads(), max_time_s)


def _more(n: int, timed_s: float, min_runs: int, min_time_s: float,
          max_time_s: float | None) -> bool:
    """Whether to take another sample."""
    if n >= MAX_RUNS:
        return False
    if max_time_s is not None and timed_s >= max_time_s and n >= min(min_runs, CAPPED_MIN_RUNS):
        return False
    return n < min_runs or timed_s < min_time_s


def _rotation(fn: Callable[[Any], Any], inputs: list) -> Callable[[], Any]:
    """A no-argument step that calls ``fn`` on the next input buffer each time."""
    state = {"i": 0}

    def step():
        x = inputs[state["i"] % len(inputs)]
        state["i"] += 1
        return fn(x)
    return step


@contextmanager
def _num_threads(n: int):
    prior = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prior)


def _time_cpu(step, warmup: int, min_runs: int, min_time_s: float, threads: int,
              max_time_s: float | None = None) -> Timing:
    # Setting the threads around the whole loop too means Timer's own set/restore is a no-op.
    with _num_threads(threads):
        timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=threads)
        for _ in range(warmup):
            step()
        one_call_s = timer.timeit(1).median
        number = 1 if one_call_s >= _MIN_SAMPLE_S else math.ceil(_MIN_SAMPLE_S / one_call_s)
        samples_ms: list[float] = []
        timed_s = 0.0
        while _more(len(samples_ms), timed_s, min_runs, min_time_s, max_time_s):
            per_call_s = timer.timeit(number).median   # one block of `number` calls, / number
            samples_ms.append(per_call_s * 1e3)
            timed_s += per_call_s * number
    return Timing.from_samples(samples_ms, "torch.utils.benchmark", number)


def _do_bench():
    """``triton.testing.do_bench`` if it can return every sample, else None."""
    try:
        from triton.testing import do_bench
    except ImportError:
        return None
    return do_bench if "return_mode" in inspect.signature(do_bench).parameters else None


def _event_ms(call) -> float:
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    call()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def _time_cuda(call, min_runs: int, min_time_s: float, calls_per_sample: int = 1,
               method: str | None = None, max_time_s: float | None = None) -> Timing:
    """Samples of ``call`` on the current CUDA device, divided by ``calls_per_sample``.

    ``do_bench`` first runs a few calls to estimate the time; for calls so slow that
    ``min_runs`` of them would pass ``max_time_s``, events time each call instead.
    """
    do_bench = _do_bench()
    samples_ms: list[float] = []
    if max_time_s is not None and _event_ms(call) * min_runs > max_time_s * 1e3:
        do_bench = None
    if do_bench is not None:
        while len(samples_ms) < min_runs:   # do_bench stops on time; make up the count
            samples_ms += [float(t) for t in
                           do_bench(call, warmup=1, rep=min_time_s * 1e3, return_mode="all")]
    else:
        timed_ms = 0.0
        while _more(len(samples_ms), timed_ms / 1e3, min_runs, min_time_s, max_time_s):
            samples_ms.append(_event_ms(call))
            timed_ms += samples_ms[-1]
    method = method or ("do_bench" if do_bench is not None else "events")
    return Timing.from_samples([t / calls_per_sample for t in samples_ms], method,
                               calls_per_sample)


def _time_cuda_graph(fn, inputs: list, warmup: int, min_runs: int, min_time_s: float) -> Timing:
    side = torch.cuda.Stream()   # warm-up off the capturing stream, as torch's docs do
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(warmup, 1)):
            for x in inputs:
                fn(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for x in inputs:
            fn(x)
    for _ in range(max(warmup, 1)):
        graph.replay()
    return _time_cuda(graph.replay, min_runs, min_time_s, calls_per_sample=len(inputs),
                      method="cuda-graph")


# ---------------------------------------------------------------------------- inputs

def last_level_cache_bytes(device: torch.device | str = "cpu") -> int:
    """L2 size of a CUDA device, or the largest CPU cache in sysfs (32 MiB if unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(getattr(props, "L2_cache_size", 0) or 50 << 20)
    sizes = []
    base = "/sys/devices/system/cpu/cpu0/cache"
    for index in (os.listdir(base) if os.path.isdir(base) else []):
        try:
            with open(os.path.join(base, index, "size")) as f:
                text = f.read().strip()            # "32768K"
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            sizes.append(int(text.rstrip("KMG")) * mult)
        except (OSError, ValueError):
            continue
    return max(sizes, default=32 << 20)


def rotation_size(bytes_per_input: int, device: torch.device | str = "cpu") -> int:
    """How many buffers to rotate: enough that together they exceed 2x the last-level
    cache, at least 4 and at most 8, and never more than 1 GiB in all (then at least 2)."""
    need = math.ceil(2 * last_level_cache_bytes(device) / max(bytes_per_input, 1))
    n = min(_MAX_BUFFERS, max(4, need))
    while n > 2 and n * bytes_per_input > _MAX_ROTATION_BYTES:
        n -= 1
    return n


def make_inputs(shape_or_example, n: int | None = None, *, dtype: torch.dtype | None = None,
                device: torch.device | str | None = None, seed: int = 0,
                vocab: int = 30522) -> list:
    """``n`` distinct random input buffers shaped like ``shape_or_example``.

    - a shape (tuple/list/``torch.Size``): standard-normal tensors (``dtype`` default fp32);
    - a tensor: the same shape, dtype, device and memory format (channels-last stays so);
      integer tensors get token ids;
    - a dict (HF models: ``input_ids``, ``attention_mask``, ...): dicts of the same keys and
      shapes; ``*_ids`` entries (bar ``token_type_ids``) get ids in ``[1000, vocab)``, float
      entries standard normal, other entries (masks, token types) are copied.

    ``n=None`` picks ``rotation_size`` for the bytes of one buffer.
    """
    if isinstance(shape_or_example, dict):
        example = {k: _like(v, dtype, device) for k, v in shape_or_example.items()}
    elif isinstance(shape_or_example, torch.Tensor):
        example = {"": _like(shape_or_example, dtype, device)}
    else:   # a shape: a meta tensor carries shape and dtype without allocating
        example = {"": torch.empty(tuple(shape_or_example), dtype=dtype or torch.float32,
                                   device="meta")}
    target = torch.device(device) if device is not None else next(
        (v.device for v in example.values() if v.device.type != "meta"), torch.device("cpu"))
    nbytes = sum(v.numel() * v.element_size() for v in example.values())
    n = rotation_size(nbytes, target) if n is None else n
    if n < 1:
        raise ValueError(f"make_inputs: n must be >= 1; got {n}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    buffers = [{k: _random_like(v, gen, vocab, target, is_ids=_is_ids(k, v))
                for k, v in example.items()} for _ in range(n)]
    return buffers if isinstance(shape_or_example, dict) else [b[""] for b in buffers]


def _is_ids(key: str, t: torch.Tensor) -> bool:
    """Token ids get random values; masks and token types are copied."""
    if t.is_floating_point():
        return False
    return key == "" or (key.endswith("ids") and key != "token_type_ids")


def _like(t: torch.Tensor, dtype, device) -> torch.Tensor:
    dtype = dtype if (dtype is not None and t.is_floating_point()) else t.dtype
    return t.to(device=device or t.device, dtype=dtype)


def _random_like(t: torch.Tensor, gen: torch.Generator, vocab: int, device: torch.device,
                 is_ids: bool) -> torch.Tensor:
    """Drawn on the CPU (the same numbers on every device), then moved."""
    if t.is_floating_point():
        x = torch.randn(t.shape, generator=gen, dtype=torch.float32)
        if t.device.type != "meta" and channels_last(t):
            x = x.contiguous(memory_format=torch.channels_last)  # the layout the model sees
    elif is_ids:
        if vocab <= 1000:
            raise ValueError(f"make_inputs: token ids are drawn from [1000, vocab); vocab={vocab}")
        x = torch.randint(1000, vocab, t.shape, generator=gen)
    else:
        return t.clone().to(device)
    return x.to(device=device, dtype=t.dtype)
