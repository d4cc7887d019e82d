"""FlyThinker: the SFT Generator plus a Reasoner whose hidden state at position j-1, rescaled,
is added (times lambda) to the Generator's input embedding at position j (see fusion.py).

The Reasoner never reads its own outputs, so training is one teacher-forced pass of each model,
and decoding can run the Reasoner's step for token k+1 beside the Generator's step for token k:
`step` is `generator_step` (needs only the previous latent) then `reasoner_step` (the next one).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache

from .fusion import LatentFusion, add_latents, embedding_norm, real_positions, shift_right
from .sft import SFT, DecodeState


class FlyThinker(SFT):
    def __init__(self, generator: nn.Module, reasoner: nn.Module, fusion: LatentFusion, reasoner_frozen: bool):
        super().__init__(generator)
        self.reasoner = reasoner  # a decoder without LM head: returns last_hidden_state
        self.fusion = fusion
        self.reasoner_frozen = reasoner_frozen

    def train(self, mode: bool = True):
        super().train(mode)
        if self.reasoner_frozen:
            self.reasoner.eval()  # a frozen Reasoner is a fixed function: no dropout
        return self

    @property
    def generator_device(self) -> torch.device:
        return self.generator.get_input_embeddings().weight.device

    @property
    def reasoner_device(self) -> torch.device:
        return next(self.reasoner.parameters()).device

    def latent_norm(self) -> torch.Tensor:
        return embedding_norm(self.generator.get_input_embeddings())

    def run_reasoner(self, input_ids, attention_mask, positions, cache=None):
        """Final hidden states, on the Generator's device."""
        hidden, cache = self.reasoner_forward(input_ids, attention_mask, positions, cache)
        return hidden.to(self.generator_device, non_blocking=True), cache

    def reasoner_forward(self, input_ids, attention_mask, positions, cache=None):
        """Final hidden states on the Reasoner's own device. When it sits on a device of its own
        (decode.reasoner_device), only tokens go there and only hidden states come back."""
        device = self.reasoner_device
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.reasoner_frozen):
            out = self.reasoner(input_ids=input_ids.to(device, non_blocking=True),
                                attention_mask=attention_mask.to(device, non_blocking=True),
                                position_ids=positions.to(device, non_blocking=True),
                                past_key_values=cache, use_cache=cache is not None)
        return out.last_hidden_state, out.past_key_values

    def fused_embeds(self, input_ids, attention_mask, prompt_len, latent_norm, reasoner_cache=None):
        """Teacher-forced Generator inputs z_j = e(x_j) + lam * P(r_{j-1}) on injected positions.
        Also returns every position's own latent: the last one feeds the first decoding step."""
        positions = real_positions(attention_mask)
        reasoner_hidden, reasoner_cache = self.run_reasoner(input_ids, attention_mask, positions, reasoner_cache)
        latents = self.fusion(reasoner_hidden, latent_norm)
        inject = self.fusion.injection_mask(attention_mask, positions, prompt_len)
        embeds = add_latents(self.embed(input_ids), shift_right(latents), inject)
        return embeds, positions, latents, reasoner_cache

    def forward(self, input_ids, attention_mask, prompt_len):
        embeds, positions, _, _ = self.fused_embeds(input_ids, attention_mask, prompt_len, self.latent_norm())
        return self.run_generator(embeds, attention_mask, positions).logits

    def prefill(self, input_ids, attention_mask, prompt_len):
        latent_norm = self.latent_norm()
        embeds, positions, latents, reasoner_cache = self.fused_embeds(
            input_ids, attention_mask, prompt_len, latent_norm, reasoner_cache=DynamicCache())
        out = self.run_generator(embeds, attention_mask, positions, cache=DynamicCache(), last_only=True)
        state = DecodeState(attention_mask, prompt_len, out.past_key_values, reasoner_cache,
                            latents=latents[:, -1], latent_norm=latent_norm)
        return out.logits[:, -1], state

    def generator_step(self, state: DecodeState, tokens: torch.Tensor, positions: torch.Tensor):
        """The Generator reads `tokens` plus the latent of the token before them."""
        inject = self.fusion.injection_mask(torch.ones_like(positions), positions, state.prompt_len)
        embeds = add_latents(self.embed(tokens[:, None]), state.latents[:, None], inject)
        out = self.run_generator(embeds, state.attention_mask, positions, cache=state.generator_cache)
        return out.logits[:, -1]

    def reasoner_step(self, state: DecodeState, tokens: torch.Tensor, positions: torch.Tensor):
        """The Reasoner reads `tokens`; returns the latent for the Generator's next step."""
        return self.latent_of(self.reasoner_hidden_step(state, tokens, positions), state)

    def reasoner_hidden_step(self, state: DecodeState, tokens: torch.Tensor, positions: torch.Tensor):
        """The Reasoner's hidden state for `tokens`, left on its own device."""
        hidden, _ = self.reasoner_forward(tokens[:, None], state.attention_mask, positions, state.reasoner_cache)
        return hidden[:, -1]

    def latent_of(self, hidden: torch.Tensor, state: DecodeState) -> torch.Tensor:
        return self.fusion(hidden.to(self.generator_device, non_blocking=True), state.latent_norm)

    def step(self, state: DecodeState, tokens: torch.Tensor):
        positions = state.append_token()
        logits = self.generator_step(state, tokens, positions)
        state.latents = self.reasoner_step(state, tokens, positions)
        return logits

