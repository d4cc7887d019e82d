"""Latent-reasoning baselines beside FlyThinker, on the same interface (see sft.py).

StaticFlyThinker  one-shot latent reasoning: the Reasoner reads the prompt once; its latent of the
                  last prompt position P-1 is added (lam * rescaled, same LatentFusion) at EVERY
                  response position j >= P. Decoding steps the Generator only.
Coconut           k continuous thoughts (Hao et al., 2024): its own module, models/coconut.py,
                  re-exported here beside the other baselines.
"""

from __future__ import annotations

import torch

from ..config import ConfigError
from .coconut import Coconut  # noqa: F401  (re-exported: every baseline importable from here)
from .flythinker import FlyThinker
from .fusion_math import add_latents, real_positions
from .layout import last_prompt_column
from .sft import DecodeState


class StaticFlyThinker(FlyThinker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.fusion.cfg.span != "response":
            raise ConfigError(
                "method=static adds the prompt's one latent at every response position: it needs "
                f"fusion.span=response (got {self.fusion.cfg.span})"
            )

    def fused_embeds(self, input_ids, attention_mask, prompt_len, latent_norm, reasoner_cache=None, profile_mask=None):
        """z_j = e(x_j) + lam * P(r_{P-1}) at response positions j >= P. Returns the one latent as
        [B, 1, d_G] (so `latents[:, -1]` feeds decoding, as in FlyThinker) and no Reasoner cache:
        the Reasoner never steps."""
        positions = real_positions(attention_mask)
        last = last_prompt_column(attention_mask, prompt_len)
        width = int(last.max()) + 1  # the Reasoner reads the prompts only (causal: the same states there)
        latents, _ = self.reasoner_latents(
            input_ids[:, :width],
            attention_mask[:, :width],
            None if profile_mask is None else profile_mask[:, :width],
            latent_norm,
        )
        latent = latents.gather(1, last[:, None, None].expand(-1, 1, latents.shape[-1]))
        inject = self.fusion.injection_mask(attention_mask, positions, prompt_len)
        return add_latents(self.embed(input_ids), latent, inject), positions, latent, None

    def step(self, state: DecodeState, tokens: torch.Tensor):
        return self.generator_step(state, tokens, state.append_token())
