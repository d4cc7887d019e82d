"""FlyThinker on one base model with two LoRA adapters, `reasoner` and `generator`: the memory of
one model (a reviewer's objection to the paper's two full models).

Training runs the two passes with the matching adapter active (peft's `set_adapter`). Decoding,
inside `with self.lora:` (the lean LoRA forward, lora_step.py), picks adapters without switching
and runs both steps as ONE batched forward over [Generator rows; Reasoner rows]: the base weights
are read once per token and both adapters' updates are one batched matmul per layer. The prompt
pass is two passes, Reasoner then Generator (the Generator's prompt inputs carry the Reasoner's
latents of that same prompt), whose caches `merge_caches` joins, or on GPU the same batching in
chunks, the Reasoner one chunk ahead (decoding/prefill.py). The batched step runs the decoder, then the LM head on the
Generator's rows with the family's logit post-processing (families.head_logits; build refuses a
family whose forward it cannot reproduce).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from transformers import DynamicCache

from .decode_cache import DecodeCache
from .families import head_logits
from .flythinker import FlyThinker
from .fusion import LatentFusion
from .fusion_math import add_latents
from .lora_step import LeanLoRA
from .sft import DecodeState

ADAPTERS = ("reasoner", "generator")


def concat_caches(first: DynamicCache, second: DynamicCache) -> DynamicCache:
    """One cache whose batch is `first`'s rows then `second`'s rows."""
    merged = DecodeCache()
    for index, (a, b) in enumerate(zip(first.layers, second.layers)):
        merged.update(torch.cat([a.keys, b.keys]), torch.cat([a.values, b.values]), index)
    return merged


class SharedBaseFlyThinker(FlyThinker):
    def __init__(self, peft_model, fusion: LatentFusion):
        super().__init__(peft_model, peft_model.get_base_model().base_model, fusion, reasoner_frozen=False)
        self.generator.set_requires_grad(list(ADAPTERS), True)
        self.lora = LeanLoRA(peft_model)  # installed by generate() while decoding (decode.lora_path=lean)

    def _use(self, adapter: str):
        """A context in which the base model runs `adapter`."""
        if self.lora.active:
            return self.lora.rows(adapter)
        lora = self.generator.base_model
        if lora.active_adapter != adapter:
            lora.set_adapter(adapter)
            lora.set_requires_grad(list(ADAPTERS), True)  # set_adapter froze the other adapter
        return nullcontext()

    def reasoner_forward(self, *args, **kwargs):
        with self._use("reasoner"):
            return super().reasoner_forward(*args, **kwargs)

    def run_generator(self, *args, **kwargs):
        with self._use("generator"):
            return super().run_generator(*args, **kwargs)

    def merge_caches(self, state: DecodeState) -> None:
        """After prefill: the Generator's rows then the Reasoner's rows in one cache, and one mask over
        both, each half its model's (the Reasoner's hides the user's history with reasoner.sees_profile=false)."""
        state.generator_cache = concat_caches(state.generator_cache, state.reasoner_cache)
        state.attention_mask = torch.cat([state.attention_mask, state.reasoner_mask])
        state.reasoner_cache = state.reasoner_attention_mask = None

    def batched_step(self, state: DecodeState, tokens: torch.Tensor) -> torch.Tensor:
        """Both models' step as one forward of 2B rows (on the cache and mask of merge_caches or
        decoding/prefill.py's prefill_shared; needs the lean LoRA forward installed)."""
        batch = tokens.shape[0]
        positions = state.append_token()  # [2B, 1]
        inject = self.fusion.injection_mask(torch.ones_like(positions[:batch]), positions[:batch], state.prompt_len)
        token_embeds = self.embed(tokens[:, None])
        embeds = torch.cat([add_latents(token_embeds, state.latents[:, None], inject), token_embeds])
        with self.lora.rows("generator", "reasoner"):  # the decoder only: the LM head reads the Generator's rows
            hidden = self.reasoner(
                inputs_embeds=embeds,
                attention_mask=state.attention_mask,
                position_ids=positions,
                past_key_values=state.generator_cache,
                use_cache=True,
            ).last_hidden_state[:, -1]
        state.latents = self.fusion(hidden[batch:], state.latent_norm)
        return head_logits(self.generator.get_base_model(), hidden[:batch])  # with the family's post-processing
