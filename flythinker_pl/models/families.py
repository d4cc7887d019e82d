"""What differs between backbone families where our code bypasses `*ForCausalLM.forward`.

Two places do: the shared-base engine computes the Generator's logits from its LM head directly
(shared.py), and the fusion adds latents to `inputs_embeds` (fusion.py). Families differ in both:
  logits      Gemma 2/3 soft-cap them (final_logit_softcapping), Granite divides by logits_scaling,
              Cohere multiplies by logit_scale; Llama, Mistral, Qwen2/3 and Phi-3 use the head as is.
  embeddings  Gemma's sqrt(d) scale is inside its embedding module, so `get_input_embeddings()` returns
              what the decoder layers see; Granite's forward multiplies `inputs_embeds` by
              embedding_multiplier afterwards, so the decoder sees that multiple of what we pass.
`head_logits` applies the logit post-processing; `check_head_logits` refuses, at build time, a family
whose forward does anything else to its logits. Vision-language checkpoints (Gemma 3 4B and up) are
refused by `check_text_only`; text-only Gemma 3 (1B) is Gemma3ForCausalLM, tested like the others.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ConfigError


def head_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """What `model.forward` returns as logits for final hidden states `hidden` (after the last
    norm): the LM head, then the family's post-processing, in the forward's own operations."""
    config = model.config
    logits = model.get_output_embeddings()(hidden)
    if getattr(config, "logits_scaling", None) is not None:  # Granite
        logits = logits / config.logits_scaling
    if getattr(config, "logit_scale", None) is not None:  # Cohere
        logits = logits * config.logit_scale
    if getattr(config, "final_logit_softcapping", None) is not None:  # Gemma 2/3
        logits = torch.tanh(logits / config.final_logit_softcapping) * config.final_logit_softcapping
    return logits


@torch.no_grad()
def check_head_logits(model: nn.Module, key: str) -> None:
    """Refuse a family whose forward changes logits in a way `head_logits` does not reproduce:
    one short forward, compared with the LM-head path on the same hidden states."""
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = torch.arange(1, min(9, vocab), device=model.get_output_embeddings().weight.device)[None]
    training = model.training
    model.eval()  # no dropout: both paths must see the same function
    try:
        expected = model(input_ids=ids).logits.float()
        ours = head_logits(model, model.base_model(input_ids=ids).last_hidden_state).float()
    finally:
        model.train(training)
    if not torch.allclose(ours, expected, rtol=1e-5, atol=1e-6):
        raise ConfigError(
            f"{key}=true computes the Generator's logits from its LM head directly (models/families.py), and "
            f"that does not reproduce {type(model).__name__}.forward (max difference "
            f"{float((ours - expected).abs().max()):.3g}): this family post-processes its logits in a way we "
            "do not know. Set reasoner.shared_base=false (two models), which runs the model's own forward."
        )


def embedding_multiplier(model: nn.Module) -> float:
    """The scalar the model's forward multiplies `inputs_embeds` by before the first decoder layer
    (Granite's embedding_multiplier; 1 for the others, Gemma's scale being inside its embedding)."""
    return float(getattr(model.config, "embedding_multiplier", None) or 1.0)


def check_text_only(model: nn.Module, key: str, name: str) -> None:
    """A vision-language checkpoint loads through AutoModelForCausalLM with its vision tower: weights
    no token reaches, which LoRA's target names would adapt too (q_proj, ...) and DDP would find
    unused. Its config nests a text config; a text-only model's config is its own text config."""
    config = model.config
    if config.get_text_config() is not config:
        raise ConfigError(
            f"{key}.name={name!r} loads as {type(model).__name__}, a vision-language model; FlyThinker reads "
            "and writes text only: use a text-only checkpoint (e.g. google/gemma-3-1b-it for Gemma 3)."
        )
