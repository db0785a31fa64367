"""``convert(..., compile=True | "max-autotune")``: the converted model compiled by Inductor.

Users who care about latency run ``torch.compile`` (and CUDA graphs), so that is what a
converted model must beat, and what it should run as. spruce's modules are plain PyTorch
in their forward (``index_select`` + ``F.linear``/``F.conv2d`` for the group-wise gather,
no opaque custom ops, no Python-side caches), so Inductor sees through them: it fuses
the gather of kept input columns into the kernel that produces the input (a LayerNorm, a
BatchNorm + ReLU), and when that producer also feeds a residual, one kernel writes both
the full output and the kept columns on the CPU (``tests/test_compiled.py`` reads
Inductor's generated code to prove it). On CUDA Inductor may still emit a separate gather
kernel after a reduction; the benchmarks report what that costs.

``compile``: ``True`` or ``"default"`` (Inductor's default mode), ``"max-autotune"``
(autotuned GEMMs and convolutions; slower to compile). CUDA graphs are spruce's own
(:class:`spruce.graphs.CudaGraphModule`), captured over the compiled forward when
``cuda_graph=True``; left at None, a compiled model on CUDA given ``example_input`` is
captured unless replaying the graph is measured slower than not (both are timed on the
example; the times are at ``result.spruce_graph_ms``).

Compilation happens at conversion when ``example_input`` is given (so its cost is paid
once, and a failure is reported there), and the compiled outputs are checked against the
eager converted model's.
"""

from __future__ import annotations

import copy
import itertools
import types
import warnings
from typing import Any

import torch
from torch import nn

from .errors import SpruceError
from .graphs import Wrapper

# spruce's name → Inductor's mode (spruce captures CUDA graphs itself)
COMPILE_MODES = {"default": "default", "max-autotune": "max-autotune-no-cudagraphs"}


def compile_mode(compile: bool | str) -> str | None:
    """Inductor mode for ``compile`` (None: do not compile); a bad value is refused."""
    if compile is False or compile is None:
        return None
    if compile is True:
        return COMPILE_MODES["default"]
    if isinstance(compile, str) and compile in COMPILE_MODES:
        return COMPILE_MODES[compile]
    raise SpruceError(f"compile={compile!r} is not a compile mode; give False, True or one of "
                      f"{', '.join(map(repr, COMPILE_MODES))}", field="compile")


def call(module: Any, x: Any) -> Any:
    """``module(x)``: a dict is keyword inputs, a tuple positional ones."""
    if isinstance(x, dict):
        return module(**x)
    return module(*x) if isinstance(x, tuple) else module(x)


_serial = itertools.count()


def own_entry(module: nn.Module):
    """A function that calls ``module``, with a code object of its own. Dynamo keeps
    compiled code per code object and runs a frame eagerly once it has been compiled
    ``torch._dynamo.config.recompile_limit`` times (8): compiling many models of one class
    (``auto``'s candidates, a dense twin, the user's own compiled copy) through their shared
    ``forward`` would silently hand back eager models. Each compiled model gets its own."""
    def run(*args: Any, **kwargs: Any) -> Any:
        return module(*args, **kwargs)
    name = f"spruce_compiled_{next(_serial)}"
    code = run.__code__.replace(co_name=name, co_qualname=name)
    return types.FunctionType(code, run.__globals__, name, None, run.__closure__)


class CompiledModule(Wrapper):
    """``module`` run through ``torch.compile``; ``module`` itself stays the eager model
    (it is what :func:`spruce.save` writes and what ``state_dict`` holds)."""

    def __init__(self, module: nn.Module, mode: str = "default", example_input: Any = None,
                 tolerance: float | None = None):
        super().__init__()
        self.module = module
        self.mode = mode
        # kept out of the module tree: its parameters are ``module``'s
        self.__dict__["_compiled"] = torch.compile(own_entry(module), mode=mode,
                                                   dynamic=False)
        if example_input is not None:
            self._warm(example_input, tolerance)

    def _warm(self, example: Any, tolerance: float | None) -> None:
        """Compile now (for ``example``'s shapes) and check the compiled outputs. Under
        ``inference_mode``, as spruce times models: Dynamo compiles again for each grad mode
        a model is called in, so a candidate timed by ``auto`` is compiled once, not twice."""
        with torch.inference_mode():
            ref = _tensors(call(self.module, example))
            try:
                out = _tensors(call(self._compiled, example))
            except Exception as e:  # Inductor failures come in many types
                first = (str(e).strip().splitlines() or [""])[0][:300]
                raise SpruceError(f"torch.compile failed on this model: {type(e).__name__}: "
                                  f"{first}; convert with compile=False to run it eagerly",
                                  field="compile") from e
        for i, (a, b) in enumerate(zip(out, ref, strict=True)):
            err = float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))
            if tolerance is not None and not err <= tolerance:
                raise SpruceError(f"the compiled model's output {i} differs from the eager "
                                  f"converted model's (relative error {err:.2e} > "
                                  f"{tolerance:.0e}); convert with compile=False",
                                  field="compile")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._compiled(*args, **kwargs)

    def __deepcopy__(self, memo: dict) -> CompiledModule:
        """A copy runs its own copy of the model (compiled again on its first call): the
        compiled function closes over this model, and functions are not deep-copied."""
        return CompiledModule(copy.deepcopy(self.module, memo), self.mode)



def _tensors(out: Any) -> list[torch.Tensor]:
    from .backends.wholemodel import tensors_of
    return tensors_of(out)


def unwrap(model: nn.Module) -> nn.Module:
    """The eager model under any compiled / CUDA-graph wrappers spruce put around it."""
    while isinstance(model, Wrapper):
        model = model.module
    return model


def finish_model(fast: nn.Module, compile: bool | str, cuda_graph: bool | None,
                 example: Any, tolerance: float) -> nn.Module:
    """``fast`` compiled (``compile``) and/or captured as a CUDA graph (``cuda_graph``;
    None: captured when compiled on CUDA with an example input), as convert promises."""
    from .graphs import CudaGraphModule

    mode = compile_mode(compile)
    on_cuda = any(t.is_cuda for t in [*fast.parameters(), *fast.buffers()])
    measure_graph = cuda_graph is None and mode is not None and on_cuda and example is not None
    if cuda_graph is None:
        cuda_graph = False
    if cuda_graph and example is None:
        raise ValueError("cuda_graph=True needs example_input: the graph is captured for "
                         "its shapes")
    if cuda_graph and not torch.cuda.is_available():
        raise ValueError("cuda_graph=True needs CUDA; this machine has none")
    built = fast.__dict__.pop("_spruce_compiled", None)  # compiled while auto checked it
    if mode is not None:
        _warn_graph_breaks(fast)
        fast = built if built is not None and built.mode == mode and built.module is fast \
            else CompiledModule(fast, mode, example, tolerance)
    if cuda_graph:
        fast = CudaGraphModule(fast, example)
    elif measure_graph:
        fast = faster_of_graph_or_not(fast, example)
    return fast


def _warn_graph_breaks(fast: nn.Module) -> None:
    """Say which layers run on a backend torch.compile cannot trace (``auto`` never picks
    one for a compiled model; a backend named by the caller may be one)."""
    from .backends import get_backend, names

    report = getattr(fast, "spruce_report", None)
    rows = [r for r in (report.rows if report is not None else [])
            if r.backend in names() and get_backend(r.backend).graph_break]
    if rows:
        names = ", ".join(r.name for r in rows[:5]) + (" …" if len(rows) > 5 else "")
        warnings.warn(f"{len(rows)} layer(s) ({names}) run on {rows[0].backend}: "
                      f"{get_backend(rows[0].backend).graph_break}, so each splits the "
                      "compiled graph and runs eagerly; convert with backend='auto' (it leaves "
                      "such backends out when compiling) or compile=False", stacklevel=3)


def faster_of_graph_or_not(fast: nn.Module, example: Any) -> nn.Module:
    """``fast`` captured as a CUDA graph, unless replaying the graph is measured slower
    than launching the compiled kernels (some models change what they run while a graph
    is captured: attention masks materialised, a slower attention kernel chosen)."""
    from .bench.timing import time_fn
    from .graphs import CudaGraphModule

    graphed = CudaGraphModule(fast, example)
    device = next(t.device for t in [*fast.parameters(), *fast.buffers()])
    knobs = dict(device=device, warmup=2, min_runs=10, min_time_s=0.05)
    plain_ms = time_fn(lambda x: call(fast, x), [example], **knobs).median_ms
    graph_ms = time_fn(lambda x: call(graphed, x), [example], **knobs).median_ms
    chosen = graphed if graph_ms <= plain_ms else fast
    chosen.__dict__["spruce_graph_ms"] = {"graph": graph_ms, "no graph": plain_ms}
    return chosen
