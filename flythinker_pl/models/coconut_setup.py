"""Building method=coconut: the marker tokens in the vocabulary, the warm start from a method=cot
run, the Generator's training mode (under LoRA, peft trains the markers' embedding rows)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..config import Config, ConfigError, load_config
from . import backbones
from .coconut import Coconut, LatentTokens

MARKER_TOKENS = ("<|start-latent|>", "<|latent|>", "<|end-latent|>")
GENERATOR_KEYS = ("name", "mode", "lora_r", "lora_alpha", "lora_targets")  # what a warm start must share
CHECKPOINT_PREFIX = "method.generator."  # MethodModule.method.generator: SFT's (cot) and Coconut's alike


def add_latent_tokens(model: nn.Module, tokenizer: PreTrainedTokenizerBase, init_text: str) -> LatentTokens:
    """The three tokens join the tokenizer (as special tokens: decoded text drops them) and the
    model's embedding; their rows, and LM-head rows when untied, copy the row of `init_text`'s one
    token, as the official run.py does ("it helps stabilise the training")."""
    init_ids = tokenizer(init_text, add_special_tokens=False)["input_ids"]
    if len(init_ids) != 1:
        raise ConfigError(f"coconut.marker_init={init_text!r} is {len(init_ids)} tokens of the Generator's "
                          f"vocabulary ({tokenizer.convert_ids_to_tokens(init_ids)}): name text that is one "
                          f"existing token, e.g. {tokenizer.eos_token!r}")
    tokenizer.add_tokens(list(MARKER_TOKENS), special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(list(MARKER_TOKENS))
    if max(ids) >= model.get_input_embeddings().weight.shape[0]:  # hub models often have spare rows
        model.resize_token_embeddings(max(ids) + 1, mean_resizing=False)
    with torch.no_grad():
        for layer in (model.get_input_embeddings(), model.get_output_embeddings()):  # the same table if tied
            layer.weight[ids] = layer.weight[init_ids[0]].clone()
    return LatentTokens(*ids)


def _newest_finished_cot(experiment_dir: Path) -> Path | None:
    """The newest run that finished training as method=cot (an experiment dir may hold other runs,
    this Coconut run among them once it finished)."""
    runs = [p for p in experiment_dir.glob("version_*") if (p / "metrics.json").exists()
            and load_config(p / "config.yaml").method == "cot"]
    return max(runs, key=lambda p: int(p.name.removeprefix("version_")), default=None)


def cot_checkpoint(init_from: str) -> tuple[Path, Path | None]:
    """(checkpoint, its run dir if any) for `coconut.init_from`: a .ckpt file, a run dir (its
    checkpoints/last.ckpt) or an experiment dir (its newest finished method=cot run's). Decoding and
    resuming rebuild the method and so read it again (the run's own checkpoint then replaces it)."""
    path = Path(init_from).expanduser()
    if path.is_file():
        run_dir = path.parent.parent
        return path, run_dir if (run_dir / "config.yaml").exists() else None
    run_dir = path if (path / "config.yaml").exists() else _newest_finished_cot(path) if path.is_dir() else None
    checkpoint = run_dir / "checkpoints" / "last.ckpt" if run_dir else None
    if checkpoint is None or not checkpoint.exists():
        raise ConfigError(f"coconut.init_from={init_from!r}: no checkpoint there (expected a .ckpt file, a run dir "
                          "with checkpoints/last.ckpt or an experiment dir with a finished run): train the "
                          "method=cot run first")
    return checkpoint, run_dir


def cot_weights(cfg: Config) -> dict[str, torch.Tensor]:
    """The Generator weights a method=cot run trained (its checkpoint holds trainable weights only)."""
    checkpoint, run_dir = cot_checkpoint(cfg.coconut.init_from)
    if run_dir is not None:
        trained = load_config(run_dir / "config.yaml")
        differing = [f"generator.{key}" for key in GENERATOR_KEYS
                     if getattr(trained.generator, key) != getattr(cfg.generator, key)]
        if trained.method != "cot" or differing:
            raise ConfigError(f"coconut.init_from={cfg.coconut.init_from!r} ({run_dir}) must be a method=cot run of "
                              f"this Generator (got method={trained.method}; differing: {differing or 'none'})")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    foreign = [key for key in state if not key.startswith(CHECKPOINT_PREFIX)]
    if foreign or not state:
        raise ConfigError(f"coconut.init_from: {checkpoint} holds {foreign[:3] or 'no weights'}, not a Generator "
                          "trained by method=cot")
    return {key.removeprefix(CHECKPOINT_PREFIX): value for key, value in state.items()}


def load_weights(generator: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    try:
        _, unexpected = generator.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ConfigError(f"coconut.init_from={source!r}: {str(err).splitlines()[-1].strip()}") from None
    if unexpected:
        raise ConfigError(f"coconut.init_from={source!r}: {len(unexpected)} weights this Generator lacks, e.g. "
                          f"{unexpected[:3]}")


def build_coconut(cfg: Config, generator: nn.Module, tokenizer: PreTrainedTokenizerBase) -> Coconut:
    """Coconut from the loaded Generator (before its training mode is set) and tokenizer, which
    gains the marker tokens when coconut.markers is on."""
    if cfg.train.gradient_checkpointing:  # the checkpointed layers drop the KV cache that links the passes
        raise ConfigError("method=coconut runs the prompt, its thoughts and the response as passes sharing "
                          "one KV cache, which train.gradient_checkpointing disables: set it to false")
    coconut, lora = cfg.coconut, cfg.generator.mode == "lora"
    weights = cot_weights(cfg) if coconut.init_from else None
    if weights is not None and not lora:  # the whole model, before the vocabulary grows (as run.py loads)
        load_weights(generator, weights, coconut.init_from)
    markers = add_latent_tokens(generator, tokenizer, coconut.marker_init) if coconut.markers else None
    generator = backbones.set_mode(generator, cfg.generator, "generator", task_type="CAUSAL_LM",
                                   trainable_tokens=(markers.start, markers.end) if markers and lora else ())
    if weights is not None and lora:  # the adapter, which exists only now
        load_weights(generator, weights, coconut.init_from)
    return Coconut(generator, coconut.k, coconut.norm, coconut.eps, markers, tokenizer.pad_token_id)
