"""The one sampler every method and engine uses.

Randomness is per sample, not per batch: each row owns a stream seeded by (seed, sample id) and
consumes one uniform per step, turned into a token by inverse-CDF over the filtered
distribution. So a sample's tokens do not depend on which other samples share its batch, their
order, or the engine, as long as its logits are the same.
"""

from __future__ import annotations

import hashlib

import torch

from ..config import DecodeConfig


def sample_seed(seed: int, sample_id: str) -> int:
    return int(hashlib.sha256(f"{seed}:{sample_id}".encode()).hexdigest()[:15], 16)


class Sampler:
    def __init__(
        self,
        cfg: DecodeConfig,
        sample_ids: list[str],
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        eos_ids: list[int],
        vocab_size: int,
    ):
        if cfg.do_sample and cfg.temperature <= 0:
            raise ValueError("decode.temperature must be > 0 when sampling; set decode.do_sample=false for greedy")
        self.cfg, self.eos_ids = cfg, list(eos_ids)
        device = prompt_ids.device
        self.uniforms = None
        if cfg.do_sample:  # drawn up front: one host-to-device copy per batch, not per token
            self.uniforms = torch.stack(
                [
                    torch.rand(
                        cfg.max_new_tokens,
                        generator=torch.Generator().manual_seed(sample_seed(cfg.seed, i)),
                        dtype=torch.float64,
                    )
                    for i in sample_ids
                ]
            ).to(device)
        self.seen = None
        if cfg.repetition_penalty != 1.0:  # tokens of the prompt (real ones) and of the output so far
            # scatter_add, not scatter_: pads (mask 0) and real tokens may share an index
            counts = torch.zeros(len(sample_ids), vocab_size, dtype=torch.long, device=device)
            self.seen = counts.scatter_add_(1, prompt_ids, prompt_mask.long()) > 0

    def __call__(self, logits: torch.Tensor, step: int) -> torch.Tensor:
        """Next token per row from next-token logits [B, V] at decoding step `step` (0-based)."""
        logits = logits.float()
        if self.seen is not None:
            logits = self._penalise_repeats(logits)
        if step < self.cfg.min_new_tokens:
            logits[:, self.eos_ids] = float("-inf")
        if not self.cfg.do_sample:
            tokens = logits.argmax(dim=-1)
        else:
            tokens = self._inverse_cdf(logits, self.uniforms[:, step])
        if self.seen is not None:
            self.seen.scatter_(1, tokens[:, None], True)
        return tokens

    def _penalise_repeats(self, logits: torch.Tensor) -> torch.Tensor:
        penalty = self.cfg.repetition_penalty  # as in CTRL / HF: shrink toward zero from either side
        penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
        return torch.where(self.seen, penalised, logits)

    def _inverse_cdf(self, logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        sorted_logits, order = (logits / self.cfg.temperature).sort(dim=-1, descending=True)
        if self.cfg.top_k > 0:
            sorted_logits[:, self.cfg.top_k :] = float("-inf")
        probs = sorted_logits.softmax(dim=-1).double()
        if self.cfg.top_p < 1.0:  # keep the smallest prefix whose mass reaches top_p (at least one token)
            mass_before = probs.cumsum(dim=-1) - probs
            probs = torch.where(mass_before < self.cfg.top_p, probs, 0.0)
        cdf = probs.cumsum(dim=-1)
        choice = torch.searchsorted(cdf, (uniforms * cdf[:, -1]).unsqueeze(-1)).clamp(max=probs.shape[1] - 1)
        return order.gather(1, choice).squeeze(-1)
