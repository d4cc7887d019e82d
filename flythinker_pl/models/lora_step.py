"""A lean forward for peft's LoRA linears while decoding: one home for it, used by every engine.

peft owns the adapters (creation, training, saving, loading). Its forward pays Python per layer
(adapter loops, dtype casts, variant checks), and mixing adapters row by row (`adapter_names`)
adds and removes a hook per layer on every call. Inside `with LeanLoRA(model):` each vanilla LoRA
Linear of `model` computes instead

    y = x W^T + b + s_a * (x A_a^T) B_a^T

reading the adapters' own parameters (no copy outlives the block, so an optimiser step between two
decodes is always seen). Which adapter a row uses: the layer's active adapter, or, within
`lean.rows("generator", "reasoner")`, adapter g for the g-th of equal row groups, with both
adapters' low-rank updates in one batched matmul and the base matmul once for all rows.

Layers peft would treat differently (merged, disabled, DoRA and other variants, dropout in
training mode, a non-Linear base layer) keep peft's forward.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as LoraLinear
from torch import nn


def _is_vanilla(layer: LoraLinear) -> bool:
    dropout_off = all(isinstance(d, nn.Identity) or not d.training for d in layer.lora_dropout.values())
    return (type(layer.base_layer) is nn.Linear and not layer.merged and not layer.disable_adapters
            and not layer.lora_variant and dropout_off)


class LeanLoRA:
    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
        self.groups: Optional[tuple[str, ...]] = None  # None: each layer's active adapter
        self.active = False
        self._stacks: dict = {}  # (layer, groups) -> stacked A, B, scales; only inside the block

    def __enter__(self) -> "LeanLoRA":
        if self.active:
            raise RuntimeError("this LeanLoRA is already installed")
        for layer in self.layers:
            if _is_vanilla(layer):
                layer.forward = self._forward_of(layer)  # an instance attribute shadows the class's
        self.active = True
        return self

    def __exit__(self, *exc) -> None:
        for layer in self.layers:
            layer.__dict__.pop("forward", None)
        self.active, self._stacks = False, {}

    @contextmanager
    def rows(self, *adapters: str):
        """Rows split into len(adapters) equal groups, group g through adapters[g]."""
        if not self.active:
            raise RuntimeError("LeanLoRA.rows needs the lean forward installed (`with lean:`)")
        previous, self.groups = self.groups, adapters
        try:
            yield
        finally:
            self.groups = previous

    def _forward_of(self, layer: LoraLinear):
        base = layer.base_layer
        adapters = {name: (layer.lora_A[name].weight, layer.lora_B[name].weight, layer.scaling[name])
                    for name in layer.lora_A}

        def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            result = F.linear(x, base.weight, base.bias)
            dtype, groups = result.dtype, self.groups or layer.active_adapters
            if len(groups) == 1 or self.groups is None:  # peft's order of operations, every active adapter
                for name in groups:
                    if name in adapters:
                        lora_a, lora_b, scaling = adapters[name]
                        result = result + F.linear(F.linear(x.to(lora_a.dtype), lora_a), lora_b) * scaling
                return result.to(dtype)
            lora_a, lora_b, scales = self._stacked(layer, adapters, groups)
            by_group = x.to(lora_a.dtype).reshape(len(groups), -1, x.shape[-1])  # [G, rows*T, d_in]
            update = torch.bmm(torch.bmm(by_group, lora_a), lora_b) * scales  # [G, rows*T, d_out]
            return (result + update.reshape(result.shape)).to(dtype)

        return forward

    def _stacked(self, layer, adapters, groups):
        key = (id(layer), groups)
        if key not in self._stacks:
            missing = [name for name in groups if name not in adapters]
            if missing:
                raise ValueError(f"LoRA layer has no adapter {missing}; it has {sorted(adapters)}")
            a, b, s = zip(*(adapters[name] for name in groups))
            if len({t.shape for t in a}) > 1:
                raise ValueError("batched adapters need one LoRA rank (reasoner.lora_r == generator.lora_r), "
                                 f"got {[t.shape[0] for t in a]}")
            scales = torch.tensor(s, dtype=a[0].dtype, device=a[0].device)[:, None, None]
            self._stacks[key] = (torch.stack(a).mT, torch.stack(b).mT, scales)
        return self._stacks[key]
