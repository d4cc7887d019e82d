"""FlyThinker: the SFT Generator plus a Reasoner whose hidden state at position j-1, rescaled,
is added (times lambda) to the Generator's input embedding at position j (see fusion.py).

The Reasoner never reads its own outputs, so training is one teacher-forced pass of each model,
and decoding can run the Reasoner's step for token k+1 beside the Generator's step for token k:
`step` is `generator_step` (needs only the previous latent) then `reasoner_step` (the next one).

Control reasoner.sees_profile=false: the Reasoner reads the same sequence with the user's history
(profile_mask) masked out and positions counted over what it sees, i.e. exactly "prompt without
history + response"; the latents it produces AT hidden positions are zeroed (they would carry the
hidden token itself into the Generator).
"""

from __future__ import annotations

import torch
from torch import nn

from .decode_cache import DecodeCache
from .devices import to_device
from .fusion import LatentFusion, embedding_norm
from .fusion_math import add_latents, real_positions, shift_right
from .sft import SFT, DecodeState


class FlyThinker(SFT):
    def __init__(
        self,
        generator: nn.Module,
        reasoner: nn.Module,
        fusion: LatentFusion,
        reasoner_frozen: bool,
        reasoner_sees_profile: bool = True,
    ):
        super().__init__(generator)
        self.reasoner = reasoner  # a decoder without LM head: returns last_hidden_state
        self.fusion = fusion
        self.reasoner_frozen = reasoner_frozen
        self.reasoner_sees_profile = reasoner_sees_profile

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
        return to_device(hidden, self.generator_device), cache

    def reasoner_forward(self, input_ids, attention_mask, positions, cache=None):
        """Final hidden states on the Reasoner's own device. When it sits on a device of its own
        (decode.reasoner_device), only tokens go there and only hidden states come back."""
        device = self.reasoner_device
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.reasoner_frozen):
            out = self.reasoner(
                input_ids=to_device(input_ids, device),
                attention_mask=to_device(attention_mask, device),
                position_ids=to_device(positions, device),
                past_key_values=cache,
                use_cache=cache is not None,
            )
        return out.last_hidden_state, out.past_key_values

    def reasoner_mask(self, attention_mask: torch.Tensor, profile_mask) -> torch.Tensor:
        """The Reasoner's attention mask: the Generator's, less the user's history if it must not see it."""
        if self.reasoner_sees_profile:
            return attention_mask
        if profile_mask is None:
            raise ValueError(
                "reasoner.sees_profile=false hides the user's history from the Reasoner, so the "
                "batch needs `profile_mask` (1 on the history's prompt tokens); none was given"
            )
        return attention_mask.masked_fill(to_device(profile_mask, attention_mask.device).bool(), 0)

    def reasoner_latents(self, input_ids, attention_mask, profile_mask, latent_norm, reasoner_cache=None):
        """lam * P(r_j) of every position j (no shift; zero where the Reasoner may not look), and its cache."""
        reasoner_mask = self.reasoner_mask(attention_mask, profile_mask)
        hidden, reasoner_cache = self.run_reasoner(
            input_ids, reasoner_mask, real_positions(reasoner_mask), reasoner_cache
        )
        latents = self.fusion(hidden, latent_norm)
        if reasoner_mask is not attention_mask:  # a hidden token's own latent would reveal it
            latents = torch.where(reasoner_mask.bool()[..., None], latents, 0.0)
        return latents, reasoner_cache

    def fused_embeds(self, input_ids, attention_mask, prompt_len, latent_norm, reasoner_cache=None, profile_mask=None):
        """Teacher-forced Generator inputs z_j = e(x_j) + lam * P(r_{j-1}) on injected positions.
        Also returns every position's own latent: the last one feeds the first decoding step."""
        positions = real_positions(attention_mask)
        latents, reasoner_cache = self.reasoner_latents(
            input_ids, attention_mask, profile_mask, latent_norm, reasoner_cache
        )
        inject = self.fusion.injection_mask(attention_mask, positions, prompt_len)
        embeds = add_latents(self.embed(input_ids), shift_right(latents), inject)
        return embeds, positions, latents, reasoner_cache

    def forward(self, input_ids, attention_mask, prompt_len, profile_mask=None, logits_to_keep=0):
        embeds, positions, _, _ = self.fused_embeds(
            input_ids, attention_mask, prompt_len, self.latent_norm(), profile_mask=profile_mask
        )
        return self.run_generator(embeds, attention_mask, positions, logits_to_keep=logits_to_keep).logits

    def prefill(self, input_ids, attention_mask, prompt_len, profile_mask=None):
        latent_norm = self.latent_norm()
        embeds, positions, latents, reasoner_cache = self.fused_embeds(
            input_ids,
            attention_mask,
            prompt_len,
            latent_norm,
            reasoner_cache=self.reasoner_decode_cache(),
            profile_mask=profile_mask,
        )
        out = self.run_generator(embeds, attention_mask, positions, cache=DecodeCache(), last_only=True)
        reasoner_mask = self.reasoner_mask(attention_mask, profile_mask)
        state = DecodeState(
            attention_mask,
            prompt_len,
            out.past_key_values,
            reasoner_cache,
            latents=latents[:, -1],
            latent_norm=latent_norm,
            reasoner_attention_mask=None if reasoner_mask is attention_mask else reasoner_mask,
        )
        return out.logits[:, -1], state

    def reasoner_decode_cache(self):
        """The Reasoner's decoding state, empty (a subclass may keep more than keys and values)."""
        return DecodeCache()

    def generator_step(self, state: DecodeState, tokens: torch.Tensor, positions: torch.Tensor):
        """The Generator reads `tokens` plus the latent of the token before them."""
        inject = self.fusion.injection_mask(torch.ones_like(positions), positions, state.prompt_len)
        embeds = add_latents(self.embed(tokens[:, None]), state.latents[:, None], inject)
        out = self.run_generator(embeds, state.attention_mask, positions, cache=state.generator_cache)
        return out.logits[:, -1]

    def reasoner_step(self, state: DecodeState, tokens: torch.Tensor):
        """The Reasoner reads `tokens` (after state.append_token); returns the latent for the
        Generator's next step."""
        return self.latent_of(self.reasoner_hidden_step(state, tokens), state)

    def reasoner_hidden_step(self, state: DecodeState, tokens: torch.Tensor):
        """The Reasoner's hidden state for `tokens`, left on its own device; its own mask and
        positions (they differ from the Generator's when it does not see the profile)."""
        hidden, _ = self.reasoner_forward(
            tokens[:, None], state.reasoner_mask, state.reasoner_position(), state.reasoner_cache
        )
        return hidden[:, -1]

    def latent_of(self, hidden: torch.Tensor, state: DecodeState) -> torch.Tensor:
        return self.fusion(to_device(hidden, self.generator_device), state.latent_norm)

    def step(self, state: DecodeState, tokens: torch.Tensor):
        positions = state.append_token()
        logits = self.generator_step(state, tokens, positions)
        state.latents = self.reasoner_step(state, tokens)
        return logits
