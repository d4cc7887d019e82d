"""Measuring, one way everywhere (the benchmarks, the GPU check, training's Throughput callback and
decoding's timings): wall-clock seconds of queued device work, and peak memory since a reset."""

from __future__ import annotations

import ctypes
import gc
import re
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

PROC_SELF = Path("/proc/self")  # Linux: the peak resident set can be read and reset per run


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable):
    """(fn(), seconds). CUDA: events on the current stream around all that fn queues, after a synchronize
    (so nothing earlier is counted); the end event is waited for. CPU: perf_counter."""
    if device.type != "cuda":
        start = time.perf_counter()
        result = fn()
        return result, time.perf_counter() - start
    stream = torch.cuda.current_stream(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record(stream)
    result = fn()
    end.record(stream)
    end.synchronize()
    return result, start.elapsed_time(end) / 1000


def release(device: torch.device) -> None:
    """Free what nothing references any more (and, on CUDA, the allocator's cached blocks)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def reset_peak_memory(device: torch.device) -> Optional[float]:
    """Start measuring peak memory now (each run of a sweep, one process, reports its own). Returns the
    CUDA memory allocated now (MiB), None on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    if (PROC_SELF / "clear_refs").exists():
        gc.collect()
        try:  # glibc keeps what earlier runs freed resident until asked to hand it back
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # another C library: the earlier runs' leftovers count
            pass
        (PROC_SELF / "clear_refs").write_text("5")  # resets VmHWM to the current resident set
    return None


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated tensor memory on `device` since `reset_peak_memory`. CPU: the process's
    peak resident set since then (Linux), or over its lifetime (other POSIX systems)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if (PROC_SELF / "status").exists():
        status = (PROC_SELF / "status").read_text()
        return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)[1]) / 2**10
    import resource  # POSIX only: imported where needed

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB elsewhere
