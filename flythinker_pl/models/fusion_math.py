"""The core math of DESIGN.md section 4 on plain tensors: its one home.

models/fusion.py wraps it for training and the framework's engines; `flythinker export` copies this
file verbatim into every model folder beside modeling_flythinker.py, so it imports torch alone.

For token ids x_0..x_{L-1} and Generator embeddings E_G:
    c   = mean L2 row norm of E_G (in the space the decoder layers see)
    r_j = c * h_j / max(||h_j||, eps)                       (norm = table_mean)
    z_j = e_G(x_j) + lam * P(r_{j-1})   for injected j;     z_j = e_G(x_j) otherwise
P is `pad` (zero-pad d_R -> d_G) or `linear` (learned projection). Injected positions are real
(non-pad) tokens with real position >= 1 that the span allows: global (all), response (>= P),
prompt (< P), P = prompt length. Pad positions and the first real token never get a latent.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def real_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each token among the real tokens of its row (left padding -> 0 for pads)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def mean_row_norm(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """c of a whole embedding table, in fp32, times the scale its module applies (Gemma's sqrt(d)).
    Detached: the rescale target is a constant, as in the paper."""
    return weight.detach().float().norm(dim=-1).mean() * scale


def rescale(hidden: torch.Tensor, target_norm: torch.Tensor, eps: float) -> torch.Tensor:
    """c * h / max(||h||, eps) over the last dim, in fp32: hidden states brought to the scale of
    input embeddings (FlyThinker's latents, Coconut's continuous thoughts)."""
    hidden = hidden.float()
    return target_norm * hidden / hidden.norm(dim=-1, keepdim=True).clamp(min=eps)


def latent_offsets(
    hidden: torch.Tensor,
    target_norm: torch.Tensor,
    lam: float,
    norm: str,
    eps: float,
    embedding_multiplier: float,
    projection: Optional[nn.Linear],
    pad_dims: int,
) -> torch.Tensor:
    """lam * P(r) for every position's Reasoner hidden state: [..., d_R] -> [..., d_G] (no shift).
    A raw latent (norm = none) is divided by the Generator's embedding multiplier (Granite), which its
    forward applies to the inputs we pass, so that the decoder sees lam * P(h) itself."""
    hidden = hidden.float()
    if norm == "table_mean":
        hidden = rescale(hidden, target_norm, eps)
    elif embedding_multiplier != 1.0:
        hidden = hidden / embedding_multiplier
    if projection is not None:
        return lam * projection(hidden.to(projection.weight.dtype))
    return lam * F.pad(hidden, (0, pad_dims))


def injection_mask(
    attention_mask: torch.Tensor, positions: torch.Tensor, prompt_len: torch.Tensor, span: str
) -> torch.Tensor:
    """Which positions receive a latent. `positions` are real positions ([B, T] or [B, 1])."""
    inject = attention_mask.bool() & (positions >= 1)
    if span == "response":
        inject &= positions >= prompt_len[:, None]
    elif span == "prompt":
        inject &= positions < prompt_len[:, None]
    return inject


def add_latents(embeds: torch.Tensor, latents: torch.Tensor, inject: torch.Tensor) -> torch.Tensor:
    """embeds + latents where `inject`; `where` (not a multiply) so a stray NaN can never leak."""
    return embeds + torch.where(inject[..., None], latents.to(embeds.dtype), 0.0)


def shift_right(latents: torch.Tensor) -> torch.Tensor:
    """Position j receives the latent produced at position j-1; position 0 gets zeros."""
    return F.pad(latents[:, :-1], (0, 0, 1, 0))
