"""FlyThinker (arXiv 2512.06690) and its latent baselines as Hugging Face models: `generate()` works
because `forward` runs both models and carries both KV caches, not a decoding loop of its own.

`flythinker export` copies this file and fusion_math.py verbatim into a model folder, whose
config.json maps AutoConfig / AutoModelForCausalLM here: plain transformers loads the folder with
`trust_remote_code=True` (peft too, for a folder exported with --adapters). flythinker-pl imports the
same file (`flythinker_pl.FlyThinkerForCausalLM`) and tests it against its own decoding engines.

    FlyThinkerForCausalLM        the Reasoner's latent of token j-1 joins the Generator's input at j
    StaticFlyThinkerForCausalLM  the Reasoner's latent of the prompt's last token joins every response token
    CoconutForCausalLM           k continuous thoughts (fed-back last hidden states) after the prompt

A call without a cache reads prompts: every real token of it is prompt (what generate's first step
passes), unless `prompt_len` [B] says where each row's response starts (a teacher-forced pass of
prompt + response). Later calls, with the returned cache, read response tokens. Batches are
left-padded; positions count real tokens, so padding never changes a row's result.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache, GenerationMixin, PreTrainedModel
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec
from transformers.modeling_outputs import CausalLMOutputWithPast

from .fusion_math import add_latents, injection_mask, latent_offsets, real_positions, rescale, shift_right

ADAPTERS_DIR = "adapters"  # --adapters: peft adapters in adapters/<generator|reasoner>/ over the saved base weights


class FlyThinkerConfig(PreTrainedConfig):
    """The two backbones' own configs (`generator`, `reasoner`: each side's family) and the fusion."""

    model_type = "flythinker"
    sub_configs_defaults = {
        "generator": SubConfigSpec(AutoConfig, model_type="qwen2"),
        "reasoner": SubConfigSpec(AutoConfig, model_type="qwen2", optional=True),
    }

    generator: dict | PreTrainedConfig | None = None
    reasoner: dict | PreTrainedConfig | None = None  # None: none (coconut, sft) or the Generator's base (shared_base)
    method: str = "flythinker"  # flythinker | static | coconut | sft (an SFT-like run exported with --adapters)
    lam: float = 0.5  # lambda, the weight of the latent
    norm: str = "table_mean"  # table_mean: latents rescaled to latent_norm | none: raw hidden states
    dims: str = "pad"  # pad: added into the first d_R dims | linear: the learned latent_projection d_R -> d_G
    span: str = "global"  # global: every position j >= 1 | response: j >= P | prompt: 1 <= j < P
    eps: float = 1e-6  # floor on ||h|| in the rescale
    # c, the mean L2 row norm of the Generator's input embedding table as its decoder layers see it
    # (fusion_math.mean_row_norm of the embedding weight, times Gemma's embed_scale), in fp32
    latent_norm: float | None = None
    shared_base: bool = False  # the Reasoner is the Generator's base model with adapter `reasoner` (--adapters)
    adapters: list[str] | None = None  # peft adapters to load from adapters/<name>/ (--adapters); None: merged
    thoughts: int = 0  # coconut: continuous thoughts after the prompt
    thought_markers: list[int] | None = None  # coconut: [start, latent, end] token ids around the thoughts, or None
    pad_token_id: int | None = None


class FlyThinkerCache:
    """What generate() carries between steps: both models' KV caches, the latent of the newest token
    the Reasoner read (the Generator's next input carries it), each row's prompt length P, and how
    many input columns were read. Beam search reorders all of it."""

    def __init__(self, prompt_len: torch.Tensor, keep: bool):
        self.generator = DynamicCache() if keep else None
        self.reasoner = DynamicCache() if keep else None
        self.prompt_len = prompt_len
        self.latents: Optional[torch.Tensor] = None  # [B, d_G]
        self.read = 0  # input columns read so far
        self.inserted = self.inserted_at = 0  # coconut: columns put after the prompt's (thoughts, markers), and where

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.read

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for cache in (self.generator, self.reasoner):
            if cache is not None:
                cache.reorder_cache(beam_idx)
        self.prompt_len = self.prompt_len[beam_idx.to(self.prompt_len.device)]
        if self.latents is not None:
            self.latents = self.latents[beam_idx.to(self.latents.device)]


class LatentCausalLM(PreTrainedModel, GenerationMixin):
    """The Generator (any causal LM) and what every method shares: the cache, the loss, the outputs.
    (Not named *PreTrainedModel: transformers' can_generate() skips such bases when it looks for GenerationMixin.)"""

    config_class = FlyThinkerConfig
    base_model_prefix = "generator"
    _supports_sdpa = _supports_flash_attn = _supports_flex_attn = True  # the backbones' own attention

    def __init__(self, config: FlyThinkerConfig):
        super().__init__(config)
        self.generator = AutoModelForCausalLM.from_config(config.generator)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # forward makes its own FlyThinkerCache on generate's first step

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """The saved weights, then the peft adapters of a folder exported with --adapters."""
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if model.config.adapters:
            model.load_adapters(str(pretrained_model_name_or_path))
        return model

    def load_adapters(self, location: str) -> None:
        from peft import PeftModel

        if "generator" in self.config.adapters:
            self.generator = PeftModel.from_pretrained(
                self.generator, location, subfolder=f"{ADAPTERS_DIR}/generator", adapter_name="generator"
            ).eval()

    def get_input_embeddings(self) -> nn.Module:
        return self.generator.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.generator.get_output_embeddings()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.generator.get_input_embeddings()(input_ids)

    def run_generator(self, embeds, attention_mask, positions, cache, logits_to_keep=0, **kwargs):
        return self.generator(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=cache is not None,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        past_key_values: Optional[FlyThinkerCache] = None,
        prompt_len: Optional[torch.Tensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        logits_to_keep: int = 0,
        inputs_embeds=None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits of the new tokens `input_ids` [B, n] (their last `logits_to_keep` columns if > 0).
        `attention_mask` [B, read + n] covers every token read so far (2D, left padding); `prompt_len`
        [B] applies to a call without cache (default: its every real token is prompt)."""
        if input_ids is None or inputs_embeds is not None:
            raise ValueError(
                f"{type(self).__name__} reads token ids (the latents come from them): pass input_ids, not inputs_embeds"
            )
        cache = past_key_values if isinstance(past_key_values, FlyThinkerCache) else None
        first = cache is None
        if attention_mask is None:
            attention_mask = input_ids.new_ones(input_ids.shape[0], input_ids.shape[1] + (0 if first else cache.read))
        if first:
            prompt_len = attention_mask.sum(-1) if prompt_len is None else prompt_len.to(input_ids.device)
            cache = FlyThinkerCache(prompt_len, keep=bool(use_cache))
        logits = self.new_logits(input_ids, attention_mask, cache, first, logits_to_keep)
        cache.read += input_ids.shape[1]
        loss = None
        if labels is not None:
            labels = labels[:, labels.shape[1] - logits.shape[1] :].to(logits.device)
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=cache if use_cache else None)

    def new_logits(self, input_ids, attention_mask, cache: FlyThinkerCache, first: bool, logits_to_keep: int):
        raise NotImplementedError


class SFTForCausalLM(LatentCausalLM):
    """The Generator alone, for SFT-like runs exported with --adapters (peft's adapter over the base weights);
    merged, they export as the plain causal LM, without this code."""

    def new_logits(self, input_ids, attention_mask, cache, first, logits_to_keep):
        positions = real_positions(attention_mask)[:, -input_ids.shape[1] :]
        return self.run_generator(
            self.embed(input_ids), attention_mask, positions, cache.generator, logits_to_keep
        ).logits


class FlyThinkerForCausalLM(LatentCausalLM):
    """z_j = e_G(x_j) + lam * P(r_{j-1}) (fusion_math.py), both models stepped inside every forward."""

    def __init__(self, config: FlyThinkerConfig):
        super().__init__(config)
        if not config.shared_base:
            self.reasoner = AutoModel.from_config(config.reasoner)  # its base model: hidden states, no LM head
        reasoner_dim = (config.reasoner or config.generator).hidden_size
        generator_dim = config.generator.hidden_size
        self.latent_projection = nn.Linear(reasoner_dim, generator_dim, bias=False) if config.dims == "linear" else None
        self.pad_dims = generator_dim - reasoner_dim
        # Granite's forward multiplies inputs_embeds by it (a raw latent is divided by it first)
        self.embedding_multiplier = float(getattr(config.generator, "embedding_multiplier", None) or 1.0)
        self.post_init()

    def load_adapters(self, location: str) -> None:
        super().load_adapters(location)
        if self.config.shared_base:  # one base: the Reasoner's adapter joins the Generator's
            self.generator.load_adapter(location, adapter_name="reasoner", subfolder=f"{ADAPTERS_DIR}/reasoner")
        elif "reasoner" in self.config.adapters:
            from peft import PeftModel

            self.reasoner = PeftModel.from_pretrained(
                self.reasoner, location, subfolder=f"{ADAPTERS_DIR}/reasoner", adapter_name="reasoner"
            ).eval()

    @contextmanager
    def adapter(self, name: str):
        """With a shared base (--adapters): the base model runs `name`'s adapter inside the block."""
        if not self.config.shared_base:
            yield
            return
        self.generator.base_model.set_adapter(name)
        try:
            yield
        finally:
            self.generator.base_model.set_adapter("generator")

    def reasoner_decoder(self) -> nn.Module:
        return self.generator.get_base_model().base_model if self.config.shared_base else self.reasoner

    def reasoner_hidden(self, input_ids, attention_mask, positions, cache: FlyThinkerCache) -> torch.Tensor:
        """The Reasoner's final hidden states (after its last norm) of the new tokens."""
        with self.adapter("reasoner"):
            return self.reasoner_decoder()(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=positions,
                past_key_values=cache.reasoner,
                use_cache=cache.reasoner is not None,
            ).last_hidden_state

    def latents(self, hidden: torch.Tensor) -> torch.Tensor:
        """lam * P(r) of each hidden state [..., d_R] -> [..., d_G]."""
        config = self.config
        target_norm = torch.tensor(
            config.latent_norm if config.latent_norm is not None else 0.0, dtype=torch.float32, device=hidden.device
        )
        return latent_offsets(
            hidden,
            target_norm,
            config.lam,
            config.norm,
            config.eps,
            self.embedding_multiplier,
            self.latent_projection,
            self.pad_dims,
        )

    def fused_embeds(self, input_ids, attention_mask, positions, cache: FlyThinkerCache, first: bool) -> torch.Tensor:
        """The Generator's inputs for the new tokens; keeps the newest token's latent for the next call."""
        embeds = self.embed(input_ids)
        new_latents = self.latents(self.reasoner_hidden(input_ids, attention_mask, positions, cache)).to(embeds.device)
        previous = shift_right(new_latents)  # zeros before the first token: position 0 gets no latent anyway
        if not first:  # the first new token carries the latent of the last token read before it
            previous = torch.cat([cache.latents[:, None].to(previous.dtype), previous[:, 1:]], dim=1)
        cache.latents = new_latents[:, -1]
        inject = injection_mask(attention_mask[:, -input_ids.shape[1] :], positions, cache.prompt_len, self.config.span)
        return add_latents(embeds, previous, inject)

    def new_logits(self, input_ids, attention_mask, cache, first, logits_to_keep):
        positions = real_positions(attention_mask)[:, -input_ids.shape[1] :]
        embeds = self.fused_embeds(input_ids, attention_mask, positions, cache, first)
        with self.adapter("generator"):
            return self.run_generator(embeds, attention_mask, positions, cache.generator, logits_to_keep).logits


class StaticFlyThinkerForCausalLM(FlyThinkerForCausalLM):
    """One-shot latent reasoning: the Reasoner reads the prompt once; lam * P(r_{P-1}) joins every
    response position j >= P (span = response)."""

    def fused_embeds(self, input_ids, attention_mask, positions, cache, first):
        embeds = self.embed(input_ids)
        if first:  # left padding: a row's last prompt token sits at width - length + P - 1
            last = attention_mask.shape[1] - attention_mask.sum(-1) + cache.prompt_len - 1
            width = int(last.max()) + 1  # the Reasoner reads the prompts only (causal: the same states there)
            hidden = self.reasoner_hidden(input_ids[:, :width], attention_mask[:, :width], positions[:, :width], cache)
            index = last.to(hidden.device)[:, None, None].expand(-1, 1, hidden.shape[-1])
            cache.latents = self.latents(hidden.gather(1, index))[:, 0].to(embeds.device)
        inject = injection_mask(attention_mask[:, -input_ids.shape[1] :], positions, cache.prompt_len, "response")
        return add_latents(embeds, cache.latents[:, None], inject)


class CoconutForCausalLM(LatentCausalLM):
    """The prompt, then `thoughts` continuous thoughts: the Generator's last hidden state (after its
    final norm) fed back as the next input embedding (rescaled to latent_norm with norm = table_mean),
    between the start and end markers when there are any; then the response. As the official code,
    the prompt and each thought are passes over one KV cache."""

    def new_logits(self, input_ids, attention_mask, cache, first, logits_to_keep):
        if first:
            if bool((cache.prompt_len != attention_mask.sum(-1)).any()):
                raise ValueError(
                    "CoconutForCausalLM reads the prompt in its first call and the response after "
                    "(its thoughts sit between them): pass the prompts alone, then the response with "
                    "the returned cache"
                )
            return self.think(input_ids, attention_mask, cache, logits_to_keep)
        column = cache.inserted_at  # the Generator's mask: the prompt's columns, the inserted ones, the rest
        mask = torch.cat(
            [
                attention_mask[:, :column],
                attention_mask.new_ones(attention_mask.shape[0], cache.inserted),
                attention_mask[:, column:],
            ],
            dim=1,
        )
        positions = real_positions(mask)[:, -input_ids.shape[1] :]
        return self.run_generator(self.embed(input_ids), mask, positions, cache.generator, logits_to_keep).logits

    def think(self, input_ids, attention_mask, cache, logits_to_keep):
        """The prompt's passes: the prompt (and start marker), one per thought but the last, the last
        thought (and end marker). Logits of the prompt's columns, the last one's after the thoughts."""
        config, batch, width = self.config, input_ids.shape[0], input_ids.shape[1]
        start, _, end = config.thought_markers or (None, None, None)
        tail = [
            *([start] if start is not None else []),
            *[config.pad_token_id or 0] * config.thoughts,
            *([end] if end is not None else []),
        ]
        ids = torch.cat([input_ids, input_ids.new_tensor(tail).expand(batch, -1)], dim=1)
        mask = torch.cat([attention_mask, attention_mask.new_ones(batch, len(tail))], dim=1)
        positions, embeds = real_positions(mask), self.embed(ids)
        first_thought = width + int(start is not None)
        bounds = [0, *range(first_thought, first_thought + config.thoughts), ids.shape[1]]
        passes = cache.generator if cache.generator is not None else DynamicCache()  # one cache links the passes
        thought, prompt_logits = None, None
        for begin, stop in zip(bounds[:-1], bounds[1:]):
            chunk = embeds[:, begin:stop]
            if thought is not None:  # the pass's first column is the newest thought
                chunk = torch.cat([thought.to(chunk.dtype), chunk[:, 1:]], dim=1)
            last_pass = stop == ids.shape[1]
            out = self.run_generator(
                chunk,
                mask[:, :stop],
                positions[:, begin:stop],
                passes,
                logits_to_keep=0 if begin == 0 and not logits_to_keep else 1,
                **({} if last_pass else {"output_hidden_states": True}),
            )
            if begin == 0:
                prompt_logits = out.logits
            if not last_pass:  # the final-norm output at the pass's last column: what the LM head reads
                hidden = out.hidden_states[-1][:, -1:]
                thought = (
                    hidden
                    if config.norm == "none"
                    else rescale(
                        hidden, torch.tensor(config.latent_norm, dtype=torch.float32, device=hidden.device), config.eps
                    )
                )
        cache.inserted, cache.inserted_at = len(tail), width
        final = out.logits[:, -1:]
        if logits_to_keep:
            return final
        return torch.cat([prompt_logits[:, : width - 1], final], dim=1)
