"""Latent fusion: Reasoner hidden states -> offsets added to the Generator's input embeddings.

The math of DESIGN.md section 4 is fusion_math.py (plain tensors; exported model folders ship
that same file); here it meets the run's config (LatentFusion) and sharded tables (embedding_norm).

e_G(x) is the input embedding as the decoder layers see it: Gemma's sqrt(d) scale is inside its
embedding module (so in e_G and in c); Granite's forward multiplies `inputs_embeds`, latent included,
by embedding_multiplier m after we pass them. With table_mean, c and the latent are both taken
before m, so the decoder sees m e(x) + lam * P(r) with ||r|| = m c, the mean norm of its own table:
nothing to do. A raw latent (norm = none) is divided by m, so that the decoder sees lam * P(h) itself
(DESIGN.md 4: latents live in the space the decoder layers see).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from ..config import ConfigError, FusionConfig

# The math on plain tensors lives in one file that exported model folders also ship (fusion_math.py).
from .fusion_math import injection_mask, latent_offsets, mean_row_norm


def embedding_norm(embedding: nn.Embedding) -> torch.Tensor:
    """c: mean L2 row norm of the embedding table as the decoder sees it (Gemma scales inside
    the module by `embed_scale`). Detached: the rescale target is a constant, as in the paper."""
    weight = embedding.weight
    if weight.dim() != 2 or weight.shape[0] == 0 or weight.shape[1] != embedding.embedding_dim:
        raise RuntimeError(
            f"The Generator's embedding weight has shape {tuple(weight.shape)}, not (vocab, "
            f"{embedding.embedding_dim}): it is sharded or released (ZeRO-3/FSDP). The latent rescale "
            "needs the full table; gather it (e.g. FSDP summon_full_params) or use fusion.norm=none."
        )
    scale = float(getattr(embedding, "embed_scale", 1.0))
    if isinstance(weight, DTensor):  # this rank's rows of a sharded table (trainer.strategy=fsdp, outside
        return _sharded_mean_row_norm(weight) * scale  # the forward that gathers it)
    return mean_row_norm(weight, scale)


def _sharded_mean_row_norm(weight: DTensor) -> torch.Tensor:
    """The whole table's mean row norm from the ranks' sums of row norms and row counts, never from
    this rank's rows alone (shards can be uneven)."""
    if weight.device_mesh.ndim != 1 or not all(p.is_shard(0) or p.is_replicate() for p in weight.placements):
        raise RuntimeError(
            f"the latent rescale reads a row-sharded table on a 1-D mesh; this one is placed "
            f"{weight.placements} on {weight.device_mesh}"
        )
    norms = weight.to_local().detach().float().norm(dim=-1)
    totals = torch.stack([norms.sum(), torch.tensor(float(len(norms)), device=norms.device)])
    if any(p.is_shard() for p in weight.placements):  # replicated: this rank's rows are the table
        torch.distributed.all_reduce(totals, group=weight.device_mesh.get_group())
    return totals[0] / totals[1]


class LatentFusion(nn.Module):
    def __init__(self, reasoner_dim: int, generator_dim: int, cfg: FusionConfig, embedding_multiplier: float = 1.0):
        super().__init__()
        if cfg.dims == "pad" and reasoner_dim > generator_dim:
            raise ConfigError(
                f"fusion.dims=pad adds the Reasoner latent into the first d_R dims of the Generator "
                f"embedding, so it needs d_R ({reasoner_dim}) <= d_G ({generator_dim}). Set "
                "fusion.dims=linear (learned projection) or choose a smaller Reasoner."
            )
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
        cfg = self.cfg
        return latent_offsets(
            reasoner_hidden,
            target_norm,
            cfg.lam,
            cfg.norm,
            cfg.eps,
            self.embedding_multiplier,
            self.project,
            self.pad_dims,
        )

    def injection_mask(
        self, attention_mask: torch.Tensor, positions: torch.Tensor, prompt_len: torch.Tensor
    ) -> torch.Tensor:
        """Which positions receive a latent. `positions` are real positions ([B, T] or [B, 1])."""
        return injection_mask(attention_mask, positions, prompt_len, self.cfg.span)
