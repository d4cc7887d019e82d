"""The common method interface, and SFT: the Generator alone, fine-tuned on profile + query.

Every method is an `nn.Module` with
    forward(input_ids, attention_mask, prompt_len, profile_mask=None, logits_to_keep=0) -> logits [B, T, V]
        one teacher-forced pass; logits[:, j] predict token j+1 of the ORIGINAL layout, whatever
        the method inserts internally (Coconut's thoughts), so one response loss fits every method;
        logits_to_keep=K > 0: only the last K columns [B, K, V] (the LM head runs on those only)
    prefill(input_ids, attention_mask, prompt_len, profile_mask=None) -> (next-token logits [B, V], DecodeState)
    step(state, tokens [B]) -> next-token logits [B, V]                  (one incremental token)
Batches are left-padded; positions are counted over real tokens so that padding never changes a
row's result, and the teacher-forced and incremental paths compute the same function.
`profile_mask` ([B, T], 1 on the prompt tokens that render the user's history) matters only to a
Reasoner that must not see that history (reasoner.sees_profile=false); other methods ignore it.

Methods (models/build.py maps `method` to them): SFT (sft, nonpers, rag, cot: they differ in data
only), FlyThinker (flythinker.py), StaticFlyThinker and Coconut (baselines.py), and
SharedBaseFlyThinker (shared.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from .decode_cache import DecodeCache
from .fusion_math import real_positions


@dataclass
class DecodeState:
    attention_mask: torch.Tensor  # [B, t] over every position already in the caches
    prompt_len: torch.Tensor  # [B] real prompt tokens per row
    generator_cache: Any
    reasoner_cache: Any = None
    latents: Optional[torch.Tensor] = None  # [B, d_G] lam * P(r) of the newest token the Reasoner read
    latent_norm: Optional[torch.Tensor] = None  # c, fixed for the whole decode
    # The Reasoner's own mask when it sees fewer tokens than the Generator (reasoner.sees_profile=false);
    # None = the Generator's.
    reasoner_attention_mask: Optional[torch.Tensor] = None

    def append_token(self) -> torch.Tensor:
        """Extend the mask(s) by one real token per row; returns that token's real position [B, 1]
        for the Generator (the Reasoner's is `reasoner_position()`)."""
        ones = self.attention_mask.new_ones(self.attention_mask.shape[0], 1)
        self.attention_mask = torch.cat([self.attention_mask, ones], dim=1)
        if self.reasoner_attention_mask is not None:
            self.reasoner_attention_mask = torch.cat([self.reasoner_attention_mask, ones], dim=1)
        return self.attention_mask.sum(-1, keepdim=True) - 1

    @property
    def reasoner_mask(self) -> torch.Tensor:
        return self.attention_mask if self.reasoner_attention_mask is None else self.reasoner_attention_mask

    def reasoner_position(self) -> torch.Tensor:
        """The newest token's position among the tokens the Reasoner sees [B, 1]."""
        return self.reasoner_mask.sum(-1, keepdim=True) - 1


class SFT(nn.Module):
    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.generator.get_input_embeddings()(input_ids)

    def run_generator(self, embeds, attention_mask, positions, cache=None, last_only=False, logits_to_keep=0, **kwargs):
        return self.generator(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=cache is not None,
            logits_to_keep=1 if last_only else logits_to_keep,
            **kwargs,
        )

    def forward(self, input_ids, attention_mask, prompt_len, profile_mask=None, logits_to_keep=0):
        return self.run_generator(
            self.embed(input_ids), attention_mask, real_positions(attention_mask), logits_to_keep=logits_to_keep
        ).logits

    def prefill(self, input_ids, attention_mask, prompt_len, profile_mask=None):
        out = self.run_generator(
            self.embed(input_ids), attention_mask, real_positions(attention_mask), cache=DecodeCache(), last_only=True
        )
        return out.logits[:, -1], DecodeState(attention_mask, prompt_len, out.past_key_values)

    def step(self, state: DecodeState, tokens: torch.Tensor):
        positions = state.append_token()
        out = self.run_generator(
            self.embed(tokens[:, None]), state.attention_mask, positions, cache=state.generator_cache
        )
        return out.logits[:, -1]
