"""``convert(..., cuda_graph=True)``: replay one captured CUDA graph per call.

Small layers are often launch-bound: a converted model issues many short kernels (gathers,
GEMMs, scatters), and the CPU time to launch them can exceed the GPU time to run them. A
CUDA graph captured once for a static input shape replays the whole forward as one launch.
Inputs of another shape or dtype run eagerly (correct, just not replayed).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map


def _same_layout(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(
            _same_layout(u, v) for u, v in zip(a, b, strict=True))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            _same_layout(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype \
            and a.device == b.device
    return a == b


class Wrapper(nn.Module):
    """A module around a converted model (``self.module``): its report and plan are the
    wrapped model's."""

    module: nn.Module

    @property
    def spruce_report(self):  # the wrapped model's conversion report
        return self.module.spruce_report

    @property
    def spruce_plan(self):  # auto's plan, when the wrapped model has one
        return self.module.spruce_plan


class CudaGraphModule(Wrapper):
    """``module`` with its forward on ``example_input`` captured as a CUDA graph.

    Outputs are cloned out of the graph's static buffers (``clone_outputs=False`` returns
    the buffers themselves, which the next call overwrites).
    """

    def __init__(self, module: nn.Module, example_input: Any, warmup: int = 3,
                 clone_outputs: bool = True):
        super().__init__()
        if not torch.cuda.is_available():
            raise ValueError("cuda_graph=True needs CUDA; this machine has none (drop the "
                             "option on the CPU)")
        first = next(iter(module.parameters()), None)
        if first is not None and not first.is_cuda:
            raise ValueError("cuda_graph=True needs the model on CUDA; move it with "
                             ".to('cuda') before converting")
        self.module = module
        self.clone_outputs = clone_outputs
        self._static_in = tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t,
                                   example_input)
        self._graph, self._static_out = self._capture(warmup)

    def _call(self, x: Any) -> Any:  # a dict: keyword inputs; a tuple: positional ones
        if isinstance(x, dict):
            return self.module(**x)
        return self.module(*x) if isinstance(x, tuple) else self.module(x)

    def _capture(self, warmup: int) -> tuple[torch.cuda.CUDAGraph, Any]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(warmup):  # lazy inits (cuBLAS handles, autotuning) happen here
                self._call(self._static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            out = self._call(self._static_in)
        return graph, out

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        x = kwargs if kwargs else args if len(args) != 1 or isinstance(self._static_in, tuple) \
            else args[0]
        if not _same_layout(self._static_in, x):
            return self._call(x)  # another shape: run eagerly
        tree_map(lambda s, v: s.copy_(v) if isinstance(s, torch.Tensor) else None,
                 self._static_in, x)
        self._graph.replay()
        if not self.clone_outputs:
            return self._static_out
        return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t,
                        self._static_out)
