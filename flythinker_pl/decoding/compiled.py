"""decode.compile: an engine's step through torch.compile, on a static state (static.py).

One compiled graph per step function (the whole sequential step, the shared engine's batched step, or a
model's own step where the engine runs the two apart), shared by every method of its class: the method
is an argument, never captured. On GPU the graph replays as a CUDA graph (mode reduce-overhead), which
removes the kernel launches a decode step is bound by; on CPU inductor's C++ wrapper calls the kernels
without Python in between. A graph compiles on the first step of a new shape (a second shape compiles
one graph with dynamic sizes) and inductor caches it on disk (its FX graph cache, TORCHINDUCTOR_CACHE_DIR,
by default under /tmp), so a later run pays seconds, not a full compile. The seconds a decode spent
compiling are counted apart (`CompiledSteps.seconds`).

Where a graph cannot be compiled (no C++ compiler, an op dynamo cannot trace in one graph) the step
runs eagerly from then on and one line says so: the same function either way.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Callable

import torch

log = logging.getLogger(__name__)


@functools.cache
def compiled(function: Callable, device_type: str) -> Callable:
    """`function` compiled for a device type: CUDA graphs on GPU, the C++ wrapper on CPU; one graph
    (fullgraph), so that a break is reported, not half-compiled."""
    if device_type == "cuda":
        return torch.compile(function, fullgraph=True, mode="reduce-overhead")
    return torch.compile(function, fullgraph=True, options={"cpp_wrapper": True})


def _graphs_compiled() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def _compile_failures() -> tuple:
    import torch._dynamo.exc as dynamo

    return dynamo.BackendCompilerFailed, dynamo.Unsupported


_failed: set = set()  # functions whose compilation failed in this process: eager from then on


class CompiledSteps:
    """Calls step functions compiled for `device` (eagerly where compiling failed) and counts the seconds
    of the calls that compiled a graph."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0

    def __call__(self, function: Callable, *args):
        if function in _failed:
            return function(*args)
        if self.device.type == "cuda":  # a new step: the previous replay's outputs (cloned) may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        graphs, start = _graphs_compiled(), time.perf_counter()
        try:
            result = compiled(function, self.device.type)(*args)
        except _compile_failures() as error:  # raised while tracing or compiling: nothing ran yet
            _failed.add(function)
            log.warning(
                "decode.compile: %s could not be compiled (%s); it decodes eagerly",
                function.__qualname__,
                str(error).splitlines()[0][:200],
            )
            return function(*args)
        if _graphs_compiled() != graphs:
            self.seconds += time.perf_counter() - start
        if self.device.type == "cuda":  # a CUDA graph's output lives in memory its next replay overwrites
            result = result.clone()
        return result
