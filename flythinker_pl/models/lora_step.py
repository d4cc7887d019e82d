"""A lean forward for peft's LoRA linears while decoding: one home for it, used by every engine.

peft owns the adapters (creation, training, saving, loading). Its forward pays Python per layer
(adapter loops, dtype casts, variant checks), and mixing adapters row by row (`adapter_names`)
adds and removes a hook per layer on every call. Inside `with LeanLoRA(model):` each vanilla LoRA
Linear of `model` computes instead

    y = x W^T + b + s_a * (x A_a^T) B_a^T

reading the adapters' own parameters (no copy outlives the block, so an optimiser step between two
decodes is always seen). Where the scaling s is a power of two (peft's default alpha / r, and 1), the
update is added in place by one `addmm_` (result += s * low_rank B^T): the floats of peft's
`result + (low_rank B^T) * s`, since multiplying by a power of two rounds nothing, without two more
passes over the output and their fresh allocations (3x faster on a prompt pass's [B*T, 512] on CPU). Which adapter a row uses: the layer's active adapter, or, within
`lean.rows("generator", "reasoner")`, adapter g for the g-th of equal row groups, with both
adapters' low-rank updates in one batched matmul and the base matmul once for all rows.

Layers peft would treat differently (merged, disabled, DoRA and other variants, dropout in
training mode, a non-Linear base layer) keep peft's forward.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Optional

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as LoraLinear
from torch import nn


def _is_vanilla(layer: LoraLinear) -> bool:
    dropout_off = all(isinstance(d, nn.Identity) or not d.training for d in layer.lora_dropout.values())
    return (
        type(layer.base_layer) is nn.Linear
        and not layer.merged
        and not layer.disable_adapters
        and not layer.lora_variant
        and dropout_off
    )


def exact_scaling(scaling: float) -> bool:
    """Whether multiplying by `scaling` is exact in floating point (a power of two), so that adding
    scaling * (a b) in one fused op gives peft's floats."""
    return scaling > 0 and math.frexp(scaling)[0] == 0.5


class LeanLoRA:
    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
        self.groups: Optional[tuple[str, ...]] = None  # None: each layer's active adapter
        self.active = False

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
        self.active = False

    @contextmanager
    def rows(self, *adapters: str):
        """Rows split into len(adapters) equal groups, group g through adapters[g]."""
        if not self.active:
            raise RuntimeError("LeanLoRA.rows needs the lean forward installed (`with lean:`)")
        if len(adapters) > 1 and not all("forward" in vars(layer) for layer in self.layers):
            raise ValueError(
                "per-row adapters need every LoRA layer on the lean forward; some are merged, "
                "disabled, DoRA or in training mode with dropout (peft's forward would apply one "
                "adapter to every row)"
            )
        previous, self.groups = self.groups, adapters
        try:
            yield
        finally:
            self.groups = previous

    def _forward_of(self, layer: LoraLinear):
        """The layer's lean forward; a new closure (and stack cache) each time the block is entered."""
        weight, bias = layer.base_layer.weight, layer.base_layer.bias
        adapters = {
            name: (layer.lora_A[name].weight, layer.lora_B[name].weight, layer.scaling[name]) for name in layer.lora_A
        }
        stacks = {}  # groups -> (A^T stacked [G, d_in, r], s * B^T stacked [G, r, d_out]), read once a block

        def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            result = F.linear(x, weight, bias)
            groups = self.groups
            if groups is None or len(groups) == 1:  # peft's operations in peft's order: the same floats
                dtype = result.dtype
                for name in groups or layer.active_adapters:
                    if name in adapters:
                        lora_a, lora_b, scaling = adapters[name]
                        low_rank = F.linear(x if x.dtype == lora_a.dtype else x.to(lora_a.dtype), lora_a)
                        if (
                            result.dtype is low_rank.dtype is lora_b.dtype
                            and result.is_contiguous()
                            and exact_scaling(scaling)
                        ):
                            result.view(-1, result.shape[-1]).addmm_(
                                low_rank.reshape(-1, low_rank.shape[-1]), lora_b.T, alpha=scaling
                            )
                        else:
                            result = result + F.linear(low_rank, lora_b) * scaling
                return result if result.dtype == dtype else result.to(dtype)
            if groups not in stacks:
                stacks[groups] = self._stack(adapters, groups)
            lora_a, lora_b = stacks[groups]
            count = len(groups)  # group g is rows [g*n, (g+1)*n): contiguous, so views split them
            if x.dtype is lora_a.dtype is result.dtype:  # (`is`: dtypes are singletons; cheaper than ==)
                low_rank = torch.bmm(x.view(count, -1, x.shape[-1]), lora_a)  # [G, n*T, r]
                result.view(count, -1, result.shape[-1]).baddbmm_(low_rank, lora_b)  # in place: no second output
                return result
            update = torch.bmm(torch.bmm(x.reshape(count, -1, x.shape[-1]).to(lora_a.dtype), lora_a), lora_b)
            return (result + update.view(result.shape)).to(result.dtype)  # peft: add in the adapter's dtype

        return forward

    @staticmethod
    def _stack(adapters: dict, groups: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [name for name in groups if name not in adapters]
        if missing:
            raise ValueError(f"LoRA layer has no adapter {missing}; it has {sorted(adapters)}")
        lora_a, lora_b, scaling = zip(*(adapters[name] for name in groups))
        if len({a.shape for a in lora_a}) > 1:
            raise ValueError(
                "batched adapters need one LoRA rank (reasoner.lora_r == generator.lora_r), "
                f"got {[a.shape[0] for a in lora_a]}"
            )
        return torch.stack(lora_a).mT, torch.stack([b * s for b, s in zip(lora_b, scaling)]).mT
