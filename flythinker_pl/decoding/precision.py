"""Decoding under a low-precision autocast (bf16-mixed) reads low-precision copies of the frozen weights.

Autocast casts a Linear's fp32 weight to bf16 at every call: per decoding step, every frozen weight of both
models is read in fp32 and written in bf16 again (found in the GPU review). `low_precision_weights` swaps,
for the duration of a decode, each frozen nn.Linear weight and bias for its copy in autocast's dtype: the
values autocast would have made, made once, so the step computes the same numbers. Only what autocast
casts is copied (Linear weights; norms and embeddings stay as they are, as autocast leaves them), and only
what does not train: trainable weights (LoRA adapters, which peft owns; a fully fine-tuned model) keep
being cast by autocast, so no second copy of them can go stale. A copy is kept for the next decode while
its source is unchanged (same storage, same version counter: an in-place load or update makes a new copy),
at the memory of half the frozen Linear weights, for as long as the model lives.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch
from torch import nn

_copies: dict = {}  # id(Parameter) -> (its source's version, data pointer and the dtype, the copy)


def _copy_of(param: nn.Parameter, dtype: torch.dtype) -> nn.Parameter:
    key = (param._version, param.data_ptr(), dtype)
    cached = _copies.get(id(param))
    if cached is None:
        weakref.finalize(param, _copies.pop, id(param), None)  # the copy goes with its source
    if cached is None or cached[0] != key:
        cached = _copies[id(param)] = (key, nn.Parameter(param.detach().to(dtype), requires_grad=False))
    return cached[1]


@contextmanager
def low_precision_weights(model: nn.Module, device_type: str):
    """Inside: under an enabled low-precision autocast on `device_type`, `model`'s frozen Linear weights
    are their copies in its dtype; outside (and without autocast) the model is as it was."""
    if not torch.is_autocast_enabled(device_type):
        yield
        return
    dtype = torch.get_autocast_dtype(device_type)
    swapped = []
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            continue
        for name in ("weight", "bias"):
            param = module._parameters.get(name)
            if param is not None and not param.requires_grad and param.is_floating_point() and param.dtype != dtype:
                module._parameters[name] = _copy_of(param, dtype)
                swapped.append((module, name, param))
    try:
        yield
    finally:
        for module, name, param in swapped:
            module._parameters[name] = param
