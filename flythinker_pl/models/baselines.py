"""Latent-reasoning baselines beside FlyThinker, on the same interface (see sft.py).

StaticFlyThinker  one-shot latent reasoning: the Reasoner reads the prompt once; its latent of the
                  last prompt position P-1 is added (lam * rescaled, same LatentFusion) at EVERY
                  response position j >= P. Decoding steps the Generator only.
Coconut           k continuous thoughts (Hao et al., 2024): after the prompt, the Generator's
                  last-layer hidden state (what its LM head reads), rescaled to the embedding norm
                  like a FlyThinker latent, is fed back as the next input embedding, k times; then
                  the response. Thoughts take real positions; the response starts at P + k.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache

from ..config import ConfigError
from .decode_cache import DecodeCache
from .flythinker import FlyThinker
from .fusion import add_latents, embedding_norm, real_positions, rescale
from .layout import gather_prompts, last_prompt_column, prompt_layout
from .sft import SFT, DecodeState


class StaticFlyThinker(FlyThinker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.fusion.cfg.span != "response":
            raise ConfigError("method=static adds the prompt's one latent at every response position: it needs "
                              f"fusion.span=response (got {self.fusion.cfg.span})")

    def fused_embeds(self, input_ids, attention_mask, prompt_len, latent_norm, reasoner_cache=None,
                     profile_mask=None):
        """z_j = e(x_j) + lam * P(r_{P-1}) at response positions j >= P. Returns the one latent as
        [B, 1, d_G] (so `latents[:, -1]` feeds decoding, as in FlyThinker) and no Reasoner cache:
        the Reasoner never steps."""
        positions = real_positions(attention_mask)
        last = last_prompt_column(attention_mask, prompt_len)
        width = int(last.max()) + 1  # the Reasoner reads the prompts only (causal: the same states there)
        latents, _ = self.reasoner_latents(input_ids[:, :width], attention_mask[:, :width],
                                           None if profile_mask is None else profile_mask[:, :width], latent_norm)
        latent = latents.gather(1, last[:, None, None].expand(-1, 1, latents.shape[-1]))
        inject = self.fusion.injection_mask(attention_mask, positions, prompt_len)
        return add_latents(self.embed(input_ids), latent, inject), positions, latent, None

    def step(self, state: DecodeState, tokens: torch.Tensor):
        return self.generator_step(state, tokens, state.append_token())


class Coconut(SFT):
    def __init__(self, generator: nn.Module, thoughts: int, eps: float = 1e-6):
        super().__init__(generator)
        self.thoughts = thoughts
        self.eps = eps  # floor on ||h|| in the rescale, as fusion.eps

    def think(self, embeds, attention_mask, positions, cache):
        """The prompt pass, then `thoughts` one-position passes, each fed the rescaled last hidden
        state of the pass before (gradients flow through the chain). Returns the logits after the
        last of them [B, V] and the mask over everything in `cache`."""
        latent_norm = embedding_norm(self.generator.get_input_embeddings())
        out = self.run_generator(embeds, attention_mask, positions, cache=cache, last_only=True,
                                 output_hidden_states=-1)  # only the final-norm output, what the LM head reads
        position = positions[:, -1:]
        for _ in range(self.thoughts):
            thought = rescale(out.hidden_states[-1][:, -1:], latent_norm, self.eps).to(embeds.dtype)
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(attention_mask), 1)], dim=1)
            position = position + 1
            out = self.run_generator(thought, attention_mask, position, cache=cache, last_only=True,
                                     output_hidden_states=-1)
        return out.logits[:, -1], attention_mask

    def forward(self, input_ids, attention_mask, prompt_len, profile_mask=None, logits_to_keep=0):
        """Prompt pass, k thought passes, then the response teacher-forced, sharing one KV cache.
        Logits come back in the input's layout (its last `logits_to_keep` columns, which must reach
        the last prompt column of every row): the last prompt column holds the logits after the
        last thought, response columns the response pass's, other columns zeros."""
        batch, width = input_ids.shape
        response_len = attention_mask.sum(-1) - prompt_len
        response_width = int(response_len.max())  # responses are the last columns of every row
        keep = logits_to_keep or width
        if keep <= response_width:
            raise ValueError(f"logits_to_keep={keep} must exceed the longest response ({response_width} tokens): "
                             "Coconut's logits of the last prompt column come from its thought passes")
        source, real = prompt_layout(attention_mask, prompt_len)
        prompt_mask = real.long()
        cache = DynamicCache()
        first_logits, mask = self.think(self.embed(gather_prompts(input_ids, source, real, 0)), prompt_mask,
                                        real_positions(prompt_mask), cache)
        # the input's last `keep` columns, filled in place (autograd tracks it) from the two passes' logits
        logits = first_logits.new_zeros(batch, keep, first_logits.shape[-1])
        if response_width:
            # the last columns of a shorter response's row are prompt tokens: masked out here
            response_mask = (torch.arange(response_width, device=input_ids.device)[None, :]
                             >= response_width - response_len[:, None]).long()
            mask = torch.cat([mask, response_mask], dim=1)
            out = self.run_generator(self.embed(input_ids[:, -response_width:]), mask,
                                     real_positions(mask)[:, -response_width:], cache=cache)
            logits[:, keep - response_width:] = out.logits
            logits[:, keep - response_width:].masked_fill_(~response_mask.bool()[..., None], 0.0)
        rows = torch.arange(batch, device=input_ids.device)
        logits[rows, last_prompt_column(attention_mask, prompt_len) - (width - keep)] = first_logits
        return logits

    def prefill(self, input_ids, attention_mask, prompt_len, profile_mask=None):
        cache = DecodeCache()
        logits, mask = self.think(self.embed(input_ids), attention_mask, real_positions(attention_mask), cache)
        return logits, DecodeState(mask, prompt_len, cache)
