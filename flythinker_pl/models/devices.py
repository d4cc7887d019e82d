"""Copies between devices that are complete when they are read, in every direction.

`tensor.to(device, non_blocking=True)` is safe towards CUDA: the copy is queued on the target's
stream, before any CUDA work that reads it. From CUDA to the CPU it is not: the copy lands in
pinned memory and returns before it is done, so the CPU may read stale tokens or hidden states.
`to_device` asks for non_blocking only towards CUDA; `AsyncCopy` starts a copy to the CPU early
and records an event that `wait()` synchronises before the CPU reads, so later GPU work can
still run while the CPU goes on.
"""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`tensor` on `device`, readable there at once; asynchronous only where that is safe (towards CUDA)."""
    device = torch.device(device)
    if tensor.device == device:
        return tensor
    return tensor.to(device, non_blocking=device.type == "cuda")


class AsyncCopy:
    """A copy to `device` started now and read later: `wait()` returns it complete. From CUDA to
    the CPU the copy is queued (non_blocking) with an event behind it on the source's stream, so
    waiting for it does not wait for GPU work queued after it; in any other direction it is
    `to_device`'s copy."""

    def __init__(self, tensor: torch.Tensor, device: torch.device | str):
        device = torch.device(device)
        self.event = None
        if tensor.device.type == "cuda" and device.type == "cpu":
            self.tensor = tensor.to(device, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(tensor.device))
        else:
            self.tensor = to_device(tensor, device)

    def wait(self) -> torch.Tensor:
        if self.event is not None:
            self.event.synchronize()
            self.event = None
        return self.tensor
