"""FlyThinker with a recurrent Reasoner: the dependency ablation (method=flythinker_recurrent).

At response positions j >= P (P = prompt length) the Reasoner also reads its own previous latent:
    u_j = e_R(x_j) + mu * r_{j-1},   r_{j-1} = c_R * h_{j-1} / max(||h_{j-1}||, eps)
h is the Reasoner's final hidden state and c_R the mean row norm of ITS OWN embedding table, so the
feedback lives in the Reasoner's embedding space (Granite's multiplier scales both, as in fusion.py).
Prompt positions get none, so the prompt stays one parallel pass. The Generator receives
lam * P(r_{j-1}) exactly as in FlyThinker; mu = 0 is FlyThinker.

This gives up what makes FlyThinker cheap (the Reasoner never reads its own outputs): h_j now waits
for h_{j-1}, so training takes sequential passes (recurrent.window):
  0   exact: the prompt in one pass, then the response one column at a time through the Reasoner's KV
      cache, autograd graph kept: one forward per response token, decoding's own computation.
  w   truncated (Jacobi): w + 1 parallel passes; pass 0 has no feedback (FlyThinker's Reasoner), pass
      p reads pass p-1's states shifted by one. Pass p is exact at positions j < P + p, so after pass w
      the states of the prompt and the first w response tokens are exact, hence the Generator's logits
      at positions <= P + w (the losses of the first w + 2 response tokens); beyond, each state carries
      the recurrence w hops deep, and the hop before reads pass 0.
Decoding is the exact recurrence in every engine: the Reasoner's cache (RecurrentCache) keeps its last
hidden state beside its keys and values, so a step stays internal to the Reasoner and still overlaps
the Generator's (the CPU worker process steps through the same `recurrent_step`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from ..config import ConfigError
from .decode_cache import DecodeCache
from .devices import to_device
from .fusion import embedding_norm
from .fusion_math import add_latents, real_positions, rescale, shift_right
from .flythinker import FlyThinker


@dataclass
class Feedback:
    """mu * r: a Reasoner hidden state as an offset to the Reasoner's own input embeddings."""

    mu: float
    norm: torch.Tensor | float  # c_R
    eps: float

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mu * rescale(hidden, self.norm, self.eps)


class RecurrentCache(DecodeCache):
    """The recurrent Reasoner's decoding state: its keys and values, and the final hidden state of the
    newest token it read, which the next token's input carries."""

    def __init__(self, feedback: Feedback):
        super().__init__()
        self.feedback = feedback
        self.last_hidden = None  # [B, d_R], set by the prompt pass


def recurrent_step(reasoner: nn.Module, input_ids, attention_mask, positions, cache: RecurrentCache) -> torch.Tensor:
    """One decoding pass of the Reasoner (the prompt, then one token a step): every token after the
    prompt is a response token, so it reads the feedback of the one before. Final hidden states [B, t, d_R]."""
    embeds = reasoner.get_input_embeddings()(input_ids)
    if cache.last_hidden is not None:
        embeds = embeds + cache.feedback(cache.last_hidden[:, None]).to(embeds.dtype)
    hidden = reasoner(
        inputs_embeds=embeds,
        attention_mask=attention_mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
    ).last_hidden_state
    cache.last_hidden = hidden[:, -1]
    return hidden


class RecurrentFlyThinker(FlyThinker):
    def __init__(self, *args, mu: float = 1.0, window: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.reasoner_sees_profile:
            raise ConfigError("method=flythinker_recurrent does not support reasoner.sees_profile=false")
        if self.fusion.cfg.span == "prompt":
            raise ConfigError(
                "method=flythinker_recurrent needs fusion.span=global or response: with "
                "span=prompt the recurrent response latents never reach the Generator"
            )
        if mu < 0 or window < 0:
            raise ConfigError(f"recurrent.mu={mu} and recurrent.window={window} must be >= 0")
        self.mu, self.window = mu, window

    def feedback(self) -> Feedback:
        return Feedback(self.mu, embedding_norm(self.reasoner.get_input_embeddings()), self.fusion.cfg.eps)

    # --- teacher-forced (training, scoring): the recurrence over the response --------------------------

    def fused_embeds(self, input_ids, attention_mask, prompt_len, latent_norm, reasoner_cache=None, profile_mask=None):
        """FlyThinker's Generator inputs from the recurrent Reasoner's states. With a cache (prefill) the
        input is the prompt alone, which gets no feedback: FlyThinker's, its RecurrentCache keeping the
        last hidden state."""
        if reasoner_cache is not None:
            return super().fused_embeds(
                input_ids, attention_mask, prompt_len, latent_norm, reasoner_cache, profile_mask
            )
        positions = real_positions(attention_mask)
        response = attention_mask.bool() & (positions >= prompt_len[:, None])
        device = self.reasoner_device
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.reasoner_frozen):
            hidden = self.reasoner_states(
                *(to_device(x, device) for x in (input_ids, attention_mask, positions, response))
            )
        latents = self.fusion(to_device(hidden, self.generator_device), latent_norm)
        inject = self.fusion.injection_mask(attention_mask, positions, prompt_len)
        return add_latents(self.embed(input_ids), shift_right(latents), inject), positions, latents, None

    def reasoner_states(self, input_ids, attention_mask, positions, response) -> torch.Tensor:
        """The Reasoner's final hidden states h [B, T, d_R] of every column, per recurrent.window."""
        embeds, feedback = self.reasoner.get_input_embeddings()(input_ids), self.feedback()
        if self.window == 0:
            return self.exact_states(embeds, attention_mask, positions, response, feedback)
        hidden = self.reasoner_pass(embeds, attention_mask, positions)  # pass 0: no feedback
        for _ in range(self.window):
            fed = torch.where(response[..., None], feedback(shift_right(hidden)).to(embeds.dtype), 0.0)
            hidden = self.reasoner_pass(embeds + fed, attention_mask, positions)
        return hidden

    def exact_states(self, embeds, attention_mask, positions, response, feedback) -> torch.Tensor:
        """Columns before the first response token of any row in one pass, then one column at a time,
        each response token fed the state of the column before (a row's prompt columns are fed nothing)."""
        responding = response.any(0)
        start = int(responding.int().argmax()) if responding.any() else embeds.shape[1]
        cache = DynamicCache()  # not DecodeCache: its in-place appends would break the autograd graph
        states = [self.reasoner_pass(embeds[:, :start], attention_mask[:, :start], positions[:, :start], cache)]
        for column in range(start, embeds.shape[1]):
            fed = torch.where(response[:, column, None], feedback(states[-1][:, -1]).to(embeds.dtype), 0.0)
            states.append(
                self.reasoner_pass(
                    (embeds[:, column] + fed)[:, None],
                    attention_mask[:, : column + 1],
                    positions[:, column : column + 1],
                    cache,
                )
            )
        return torch.cat(states, dim=1)

    def reasoner_pass(self, embeds, attention_mask, positions, cache=None) -> torch.Tensor:
        return self.reasoner(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=cache is not None,
        ).last_hidden_state

    # --- decoding: FlyThinker's prefill and steps, the Reasoner's through its RecurrentCache ---------

    def reasoner_decode_cache(self) -> RecurrentCache:
        return RecurrentCache(Feedback(self.mu, float(self.feedback().norm), self.fusion.cfg.eps))

    def reasoner_forward(self, input_ids, attention_mask, positions, cache=None):
        if not isinstance(cache, RecurrentCache):
            raise RuntimeError(
                "the recurrent Reasoner's states depend on where the response starts: "
                "teacher-forced passes go through fused_embeds (prompt_len), decoding through "
                "prefill's RecurrentCache"
            )
        device = self.reasoner_device
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.reasoner_frozen):
            hidden = recurrent_step(
                self.reasoner, *(to_device(x, device) for x in (input_ids, attention_mask, positions)), cache
            )
        return hidden, cache
