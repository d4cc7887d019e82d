"""Latent fusion: Reasoner hidden states -> offsets added to the Generator's input embeddings.

The math of DESIGN.md section 4, for token ids x_0..x_{L-1} and Generator embeddings E_G:
    c   = mean L2 row norm of E_G (in the space the decoder layers see)
    r_j = c * h_j / max(||h_j||, eps)                       (fusion.norm = table_mean)
    z_j = e_G(x_j) + lam * P(r_{j-1})   for injected j;     z_j = e_G(x_j) otherwise
P is `pad` (zero-pad d_R -> d_G) or `linear` (learned projection). Injected positions are real
(non-pad) tokens with real position >= 1 that the span allows: global (all), response (>= P),
prompt (< P), P = prompt length. Pad positions and the first real token never get a latent.

e_G(x) is the input embedding as the decoder layers see it: Gemma's sqrt(d) scale is inside its
embedding module (so in e_G and in c); Granite's forward multiplies `inputs_embeds`, latent included,
by embedding_multiplier m after we pass them. With table_mean, c and the latent are both taken
before m, so the decoder sees m e(x) + lam * P(r) with ||r|| = m c, the mean norm of its own table:
nothing to do. A raw latent (norm = none) is divided by m, so that the decoder sees lam * P(h) itself
(DESIGN.md 4: latents live in the space the decoder layers see).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from ..config import ConfigError, FusionConfig


def real_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each token among the real tokens of its row (left padding -> 0 for pads)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def embedding_norm(embedding: nn.Embedding) -> torch.Tensor:
    """c: mean L2 row norm of the embedding table as the decoder sees it (Gemma scales inside
    the module by `embed_scale`). Detached: the rescale target is a constant, as in the paper."""
    weight = embedding.weight
    if weight.dim() != 2 or weight.shape[0] == 0 or weight.shape[1] != embedding.embedding_dim:
        raise RuntimeError(
            f"The Generator's embedding weight has shape {tuple(weight.shape)}, not (vocab, "
            f"{embedding.embedding_dim}): it is sharded or released (ZeRO-3/FSDP). The latent rescale "
            "needs the full table; gather it (e.g. FSDP summon_full_params) or use fusion.norm=none.")
    scale = float(getattr(embedding, "embed_scale", 1.0))
    if isinstance(weight, DTensor):  # this rank's rows of a sharded table (trainer.strategy=fsdp, outside
        return _sharded_mean_row_norm(weight) * scale  # the forward that gathers it)
    return weight.detach().float().norm(dim=-1).mean() * scale


def _sharded_mean_row_norm(weight: DTensor) -> torch.Tensor:
    """The whole table's mean row norm from the ranks' sums of row norms and row counts, never from
    this rank's rows alone (shards can be uneven)."""
    if weight.device_mesh.ndim != 1 or not all(p.is_shard(0) or p.is_replicate() for p in weight.placements):
        raise RuntimeError(f"the latent rescale reads a row-sharded table on a 1-D mesh; this one is placed "
                           f"{weight.placements} on {weight.device_mesh}")
    norms = weight.to_local().detach().float().norm(dim=-1)
    totals = torch.stack([norms.sum(), torch.tensor(float(len(norms)), device=norms.device)])
    if any(p.is_shard() for p in weight.placements):  # replicated: this rank's rows are the table
        torch.distributed.all_reduce(totals, group=weight.device_mesh.get_group())
    return totals[0] / totals[1]


def rescale(hidden: torch.Tensor, target_norm: torch.Tensor, eps: float) -> torch.Tensor:
    """c * h / max(||h||, eps) over the last dim, in fp32: hidden states brought to the scale of
    input embeddings (FlyThinker's latents, Coconut's continuous thoughts)."""
    hidden = hidden.float()
    return target_norm * hidden / hidden.norm(dim=-1, keepdim=True).clamp(min=eps)


class LatentFusion(nn.Module):
    def __init__(self, reasoner_dim: int, generator_dim: int, cfg: FusionConfig, embedding_multiplier: float = 1.0):
        super().__init__()
        if cfg.dims == "pad" and reasoner_dim > generator_dim:
            raise ConfigError(
                f"fusion.dims=pad adds the Reasoner latent into the first d_R dims of the Generator "
                f"embedding, so it needs d_R ({reasoner_dim}) <= d_G ({generator_dim}). Set "
                "fusion.dims=linear (learned projection) or choose a smaller Reasoner.")
        self.cfg = cfg
        self.embedding_multiplier = embedding_multiplier  # families.embedding_multiplier of the Generator
        self.pad_dims = generator_dim - reasoner_dim
        self.project = None
        if cfg.dims == "linear":
            self.project = nn.Linear(reasoner_dim, generator_dim, bias=False)
            # Orthogonal columns keep ||P r|| = ||r|| when d_R <= d_G, so `linear` starts
            # as a rotated `pad` instead of a random rescale.
            nn.init.orthogonal_(self.project.weight)

    def forward(self, reasoner_hidden: torch.Tensor, target_norm: torch.Tensor) -> torch.Tensor:
        """lam * P(r) for every position's hidden state: [..., d_R] -> [..., d_G] (no shift)."""
        hidden = reasoner_hidden.float()
        if self.cfg.norm == "table_mean":
            hidden = rescale(hidden, target_norm, self.cfg.eps)
        elif self.embedding_multiplier != 1.0:  # the forward will multiply it back
            hidden = hidden / self.embedding_multiplier
        if self.project is not None:
            projected = self.project(hidden.to(self.project.weight.dtype))
        else:
            projected = F.pad(hidden, (0, self.pad_dims))
        return self.cfg.lam * projected

    def injection_mask(self, attention_mask: torch.Tensor, positions: torch.Tensor,
                       prompt_len: torch.Tensor) -> torch.Tensor:
        """Which positions receive a latent. `positions` are real positions ([B, T] or [B, 1])."""
        inject = attention_mask.bool() & (positions >= 1)
        if self.cfg.span == "response":
            inject &= positions >= prompt_len[:, None]
        elif self.cfg.span == "prompt":
            inject &= positions < prompt_len[:, None]
        return inject


def add_latents(embeds: torch.Tensor, latents: torch.Tensor, inject: torch.Tensor) -> torch.Tensor:
    """embeds + latents where `inject`; `where` (not a multiply) so a stray NaN can never leak."""
    return embeds + torch.where(inject[..., None], latents.to(embeds.dtype), 0.0)


def shift_right(latents: torch.Tensor) -> torch.Tensor:
    """Position j receives the latent produced at position j-1; position 0 gets zeros."""
    return F.pad(latents[:, :-1], (0, 0, 1, 0))
