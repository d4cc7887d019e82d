"""FlyThinker's prompt pass in chunks, the Reasoner one chunk ahead of the Generator.

The Generator's prompt position j reads the Reasoner's latent of j-1 only, so the prompt's columns can
go in chunks c_0 .. c_{n-1}: the Reasoner reads chunk i while the Generator reads chunk i-1, whose
latents (and the one before its first column) the Reasoner produced a stage earlier. Stage 0 is the
Reasoner's first chunk alone, stage n the Generator's last. Each model reads its chunk through its KV
cache with the positions and masks of the whole prompt: the function of the one-pass prefill
(FlyThinker.prefill), up to the order of floating-point sums.

What runs side by side is the engine's business (engines.py):
  two models  `prefill_two_models(method, ..., beside=..., join=...)`: the Reasoner's chunks go through
              `beside` (a side CUDA stream on one GPU: its chunk i+1 runs while the main stream runs the
              Generator's chunk i) and `join` hands their latents to the Generator.
  shared base `prefill_shared(method, ...)`: ONE forward a stage over [Generator chunk i-1; Reasoner
              chunk i], both adapters batched by row (lean LoRA), the base weights read once a stage.
              The Generator's rows lag one chunk: their cache starts with one chunk of masked columns and
              the Reasoner's ends with one (its stage-n inputs are padding, moved to its front after the
              prompt), so that both halves share one cache, then one batched step a token
              (SharedBaseFlyThinker.batched_step). The prompt is left-padded to whole chunks: more
              padding, the same function.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..models.decode_cache import DecodeCache
from ..models.families import head_logits
from ..models.flythinker import FlyThinker
from ..models.fusion_math import add_latents, real_positions
from ..models.shared import SharedBaseFlyThinker
from ..models.sft import DecodeState

CHUNKS = 4  # the Reasoner's first chunk (1/CHUNKS of its pass) is the part no overlap can hide
MIN_CHUNK = 32  # columns: shorter chunks cost more per column than the overlap saves


def chunk_width(columns: int) -> int:
    return max(MIN_CHUNK, -(-columns // CHUNKS))


def chunkable(method) -> bool:
    """Methods whose prompt pass is FlyThinker's own (a subclass that changes its inputs or the Reasoner's
    cache, the static or recurrent Reasoner, keeps its one-pass prefill)."""
    return type(method) in (FlyThinker, SharedBaseFlyThinker)


class _Prompt:
    """What every chunk reads: the whole prompt's masks, positions and injection mask."""

    def __init__(self, method: FlyThinker, input_ids, attention_mask, prompt_len, profile_mask):
        self.method, self.input_ids, self.attention_mask = method, input_ids, attention_mask
        self.prompt_len = prompt_len
        self.latent_norm = method.latent_norm()
        self.reasoner_mask = method.reasoner_mask(attention_mask, profile_mask)
        self.positions = real_positions(attention_mask)
        self.reasoner_positions = real_positions(self.reasoner_mask)
        self.inject = method.fusion.injection_mask(attention_mask, self.positions, prompt_len)
        width = chunk_width(input_ids.shape[1])
        self.bounds = [(start, min(start + width, input_ids.shape[1])) for start in range(0, input_ids.shape[1], width)]

    def latents(self, hidden: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """lam * P(r) of columns [start, end), zero where the Reasoner may not look (FlyThinker.reasoner_latents)."""
        latents = self.method.fusion(hidden, self.latent_norm)
        if self.reasoner_mask is not self.attention_mask:
            latents = torch.where(self.reasoner_mask[:, start:end].bool()[..., None], latents, 0.0)
        return latents

    def generator_embeds(self, start: int, end: int, before: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """z_j for columns [start, end): `before` [B, 1, d_G] is the latent of column start-1 (zeros for
        column -1), `latents` those of the chunk's own columns (the last one waits for the next chunk)."""
        shifted = torch.cat([before, latents[:, :-1]], dim=1)
        return add_latents(self.method.embed(self.input_ids[:, start:end]), shifted, self.inject[:, start:end])


def prefill_two_models(
    method: FlyThinker,
    input_ids,
    attention_mask,
    prompt_len,
    profile_mask=None,
    beside: Callable = lambda run: run(),
    join: Callable = lambda handle: handle,
):
    """The chunked prompt pass of a Generator and a Reasoner of its own: `beside(run)` starts the
    Reasoner's chunk `run()` (in order, or on a side stream) and returns a handle, `join(handle)` its
    latents, readable by the Generator. Returns prefill's (next-token logits, DecodeState)."""
    prompt = _Prompt(method, input_ids, attention_mask, prompt_len, profile_mask)
    generator_cache, reasoner_cache = DecodeCache(), method.reasoner_decode_cache()

    def reasoner_chunk(start: int, end: int):
        def run():
            hidden, _ = method.run_reasoner(
                input_ids[:, start:end],
                prompt.reasoner_mask[:, :end],
                prompt.reasoner_positions[:, start:end],
                reasoner_cache,
            )
            return prompt.latents(hidden, start, end)

        return beside(run)

    pending, before, out = reasoner_chunk(*prompt.bounds[0]), None, None
    for index, (start, end) in enumerate(prompt.bounds):
        latents = join(pending)
        if index + 1 < len(prompt.bounds):  # queued before the Generator's chunk, so it may run beside it
            pending = reasoner_chunk(*prompt.bounds[index + 1])
        if before is None:  # column -1 has no latent
            before = latents.new_zeros(latents.shape[0], 1, latents.shape[-1])
        embeds = prompt.generator_embeds(start, end, before, latents)
        out = method.run_generator(
            embeds, attention_mask[:, :end], prompt.positions[:, start:end], cache=generator_cache, last_only=True
        )
        before = latents[:, -1:]
    masks_differ = prompt.reasoner_mask is not attention_mask
    state = DecodeState(
        attention_mask,
        prompt_len,
        generator_cache,
        reasoner_cache,
        latents=before[:, 0],
        latent_norm=prompt.latent_norm,
        reasoner_attention_mask=prompt.reasoner_mask if masks_differ else None,
    )
    return out.logits[:, -1], state


def prefill_shared(method: SharedBaseFlyThinker, input_ids, attention_mask, prompt_len, profile_mask=None):
    """The shared base's chunked prompt pass, one batched forward a stage (needs the lean LoRA forward
    installed). Returns (next-token logits, DecodeState) with the 2B-row cache and mask batched_step reads."""
    width = chunk_width(input_ids.shape[1])
    extra = -input_ids.shape[1] % width  # left padding up to whole chunks
    input_ids, attention_mask = F.pad(input_ids, (extra, 0)), F.pad(attention_mask, (extra, 0))
    profile_mask = None if profile_mask is None else F.pad(profile_mask, (extra, 0))
    prompt = _Prompt(method, input_ids, attention_mask, prompt_len, profile_mask)
    rows, lag = input_ids.shape[0], attention_mask.new_zeros(input_ids.shape[0], width)
    # [Generator rows: a chunk of lag, then the prompt; Reasoner rows: the prompt, then a chunk of padding]
    mask = torch.cat([torch.cat([lag, attention_mask], 1), torch.cat([prompt.reasoner_mask, lag], 1)])
    cache, stages = DecodeCache(), len(prompt.bounds) + 1
    embedding = method.generator.get_input_embeddings().weight
    padding = embedding.new_zeros(rows, width, embedding.shape[1])  # (input rows with nothing to read)
    no_positions = prompt.positions.new_zeros(rows, width)
    before, latents, hidden = None, None, None
    for stage in range(stages):
        if stage == 0:  # the Generator has no chunk yet
            generator_embeds, generator_positions = padding, no_positions
        else:
            start, end = prompt.bounds[stage - 1]
            if before is None:
                before = latents.new_zeros(rows, 1, latents.shape[-1])
            generator_embeds = prompt.generator_embeds(start, end, before, latents)
            generator_positions = prompt.positions[:, start:end]
            before = latents[:, -1:]
        if stage < len(prompt.bounds):
            start, end = prompt.bounds[stage]
            reasoner_embeds = method.embed(input_ids[:, start:end])
            reasoner_positions = prompt.reasoner_positions[:, start:end]
        else:  # the Reasoner is done: its rows read padding
            reasoner_embeds, reasoner_positions = padding, no_positions
        embeds = torch.cat([generator_embeds, reasoner_embeds.to(generator_embeds.dtype)])
        with method.lora.rows("generator", "reasoner"):
            hidden = method.reasoner(
                inputs_embeds=embeds,
                attention_mask=mask[:, : (stage + 1) * width],
                position_ids=torch.cat([generator_positions, reasoner_positions]),
                past_key_values=cache,
                use_cache=True,
            ).last_hidden_state
        if stage < len(prompt.bounds):
            latents = prompt.latents(hidden[rows:], *prompt.bounds[stage])
    logits = head_logits(method.generator.get_base_model(), hidden[:rows, -1:])[:, -1]
    # The Reasoner's rows end with their chunk of padding: move it to their front, where the Generator's
    # rows have theirs, so that no row has masked columns between its prompt and the tokens to come (a
    # sliding window counts columns; keys carry their positions, wherever they sit)
    for layer in cache.layers:
        layer.keys[rows:] = layer.keys[rows:].roll(width, dims=2)
        layer.values[rows:] = layer.values[rows:].roll(width, dims=2)
    mask[rows:] = mask[rows:].roll(width, dims=1)
    state = DecodeState(mask, prompt_len, cache, None, latents=before[:, 0], latent_norm=prompt.latent_norm)
    return logits, state
