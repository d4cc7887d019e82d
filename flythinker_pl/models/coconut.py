"""Coconut (Hao et al., 2024; facebookresearch/coconut): continuous thoughts between prompt and response.

After the prompt (and <|start-latent|> when markers are on), the Generator's last hidden state
(after its final norm: what its LM head reads) is fed back as the next input embedding, k times;
then <|end-latent|> and the response. As in the official forward, one batch takes k+1 passes over
one KV cache: the prompt; one per thought but the last; the last thought with the rest.

norm=none feeds the hidden state back raw, as the official code does; norm=table_mean rescales it
to the mean row norm of the embedding table first (FlyThinker's device, kept as a labelled variant).

Rows may have different numbers of thoughts (the curriculum: data/coconut_schedule.py). The
prompts are left-padded to end at one column P, so every row's thoughts start at the same column
(the official collator aligns the first latent the same way); where a row has run out of thoughts,
its own next token fills the column. Internal layout of a row:
    [pad][prompt][start?][thought x k_row][end?][target][pad]
Logits come back in the input's layout (models/sft.py): the last prompt column holds the logits of
the position just before the first target token (end marker, last thought or last prompt token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from transformers import DynamicCache

from ..config import ConfigError
from .decode_cache import DecodeCache
from .fusion import embedding_norm
from .fusion_math import real_positions, rescale
from .layout import gather_prompts, prompt_layout
from .sft import SFT, DecodeState

NORMS = ("none", "table_mean")


@dataclass(frozen=True)
class LatentTokens:
    """Ids of <|start-latent|>, <|latent|> and <|end-latent|>. The latent id only names the thought
    slots in the vocabulary (as in the official data); its embedding is never read."""

    start: int
    latent: int
    end: int


@dataclass
class ThoughtLayout:
    ids: torch.Tensor  # [B, N] internal ids; thought and padding columns hold the pad id
    attention_mask: torch.Tensor  # [B, N]
    is_thought: torch.Tensor  # [B, N] bool
    first_thought: int  # column where every row's thoughts start
    source: torch.Tensor  # [B, W] internal column holding each input column's logits
    real: torch.Tensor  # [B, W] bool: input columns that are tokens (not padding)


class Coconut(SFT):
    def __init__(
        self,
        generator: nn.Module,
        thoughts: int,
        norm: str = "none",
        eps: float = 1e-6,
        markers: Optional[LatentTokens] = None,
        pad_id: int = 0,
    ):
        super().__init__(generator)
        if norm not in NORMS:
            raise ConfigError(f"coconut.norm={norm!r} is not allowed; choose one of {', '.join(NORMS)}")
        # every row's, or [B] one per row of the batch being decoded, unless a `thoughts` argument says
        # otherwise (the curriculum sets both: lit/coconut_curriculum.py)
        self.thoughts: int | torch.Tensor = thoughts
        self.norm, self.eps, self.markers, self.pad_id = norm, eps, markers, pad_id

    def layout(self, input_ids, attention_mask, prompt_len, thoughts: torch.Tensor) -> ThoughtLayout:
        width = input_ids.shape[1]
        lengths = attention_mask.sum(-1)
        target_len = lengths - prompt_len
        source, real = prompt_layout(attention_mask, prompt_len)
        prompt_width = source.shape[1]
        marker = int(self.markers is not None)
        after = torch.arange(int((marker + thoughts + marker + target_len).max()), device=input_ids.device)[None]
        thought_end = marker + thoughts[:, None]  # columns after the prompt: [start?][thoughts][end?][target]
        target_index = after - thought_end - marker
        is_target = (target_index >= 0) & (target_index < target_len[:, None])
        target_column = (width - target_len[:, None] + target_index).clamp(0, width - 1)
        tail = torch.where(is_target, input_ids.gather(1, target_column), self.pad_id)
        if self.markers is not None:
            tail = torch.where(after == 0, self.markers.start, tail)
            tail = torch.where(after == thought_end, self.markers.end, tail)
        is_thought = (after >= marker) & (after < thought_end)
        ids = torch.cat([gather_prompts(input_ids, source, real, self.pad_id), tail], dim=1)
        mask = torch.cat([real.long(), (after < thought_end + marker + target_len[:, None]).long()], dim=1)
        is_thought = torch.cat([torch.zeros_like(real), is_thought], dim=1)

        # where each input column's logits are: prompt columns in the prompt, the last prompt column and
        # the target from the position before the first target token on
        columns = torch.arange(width, device=input_ids.device)[None]
        first = (width - lengths)[:, None]
        last_prompt = first + prompt_len[:, None] - 1
        in_prompt = prompt_width - prompt_len[:, None] + columns - first
        in_tail = prompt_width + marker + thoughts[:, None] + marker - 1 + columns - last_prompt
        internal = torch.where(columns < last_prompt, in_prompt, in_tail)
        return ThoughtLayout(ids, mask, is_thought, prompt_width + marker, internal, columns >= first)

    def feedback(self, hidden: torch.Tensor, latent_norm: Optional[torch.Tensor]) -> torch.Tensor:
        """The next thought from the last hidden state [B, 1, d]."""
        return hidden if latent_norm is None else rescale(hidden, latent_norm, self.eps)

    def run(self, input_ids, attention_mask, prompt_len, thoughts, cache, logits_to_keep=0):
        """The k+1 passes (k = most thoughts of any row). Returns the input layout's last
        `logits_to_keep` columns of logits (all when 0; zeros on padding) and the internal mask."""
        if thoughts is None:
            thoughts = torch.as_tensor(self.thoughts).expand(prompt_len.shape)
        thoughts = thoughts.to(prompt_len.device)
        layout = self.layout(input_ids, attention_mask, prompt_len, thoughts)
        keep = logits_to_keep or input_ids.shape[1]
        source, real = layout.source[:, -keep:], layout.real[:, -keep:]
        needed_from = int(source[real].min())  # the first internal column whose logits are read

        embeds = self.embed(layout.ids)
        positions = real_positions(layout.attention_mask)
        latent_norm = embedding_norm(self.generator.get_input_embeddings()) if self.norm == "table_mean" else None
        most, start, width = int(thoughts.max()), layout.first_thought, layout.ids.shape[1]
        # passes: the prompt; each thought but the last; the last thought with everything after it
        bounds = [0, *range(start, start + most), width] if most else [0, width]
        logits, thought = [], None
        for begin, end in zip(bounds[:-1], bounds[1:]):
            chunk = embeds[:, begin:end]
            if thought is not None:  # the pass's first column is the newest thought in rows that still have one
                fed = torch.where(layout.is_thought[:, begin, None, None], thought.to(chunk.dtype), chunk[:, :1])
                chunk = torch.cat([fed, chunk[:, 1:]], dim=1)
            last_pass = end == width
            read = end - max(begin, needed_from)  # this pass's columns whose logits are read
            out = self.run_generator(
                chunk,
                layout.attention_mask[:, :end],
                positions[:, begin:end],
                cache=cache,
                logits_to_keep=max(read, 1),
                **({} if last_pass else {"output_hidden_states": -1}),
            )
            if read > 0:
                logits.append(out.logits[:, -read:])
            if not last_pass:  # the final-norm output at the pass's last column: what the LM head reads
                thought = self.feedback(out.hidden_states[-1][:, -1:], latent_norm)
        internal = torch.cat(logits, dim=1)
        index = (source - needed_from).clamp(min=0)
        kept = internal.gather(1, index[..., None].expand(-1, -1, internal.shape[-1]))
        return kept.masked_fill(~real[..., None], 0.0), layout.attention_mask

    def forward(self, input_ids, attention_mask, prompt_len, profile_mask=None, logits_to_keep=0, thoughts=None):
        """One teacher-forced pass; `thoughts` [B] overrides `self.thoughts` per row (the curriculum)."""
        logits, _ = self.run(input_ids, attention_mask, prompt_len, thoughts, DynamicCache(), logits_to_keep)
        return logits

    def prefill(self, input_ids, attention_mask, prompt_len, profile_mask=None, thoughts=None):
        cache = DecodeCache()
        logits, mask = self.run(input_ids, attention_mask, prompt_len, thoughts, cache, logits_to_keep=1)
        return logits[:, -1], DecodeState(mask, prompt_len, cache)
