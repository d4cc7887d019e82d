"""Built-in tiny presets (Qwen2 architecture) for CPU runs, tests and the Reasoner-size ablation.

A preset becomes a real (small) language model before any fine-tuning, as the paper's recipe
fine-tunes pretrained models: a byte-level BPE tokenizer is trained on the corpus, then a short
next-token pretraining run. Both are saved with `save_pretrained` under the cache directory,
keyed by preset, corpus fingerprint, steps and seed, and loaded back with `from_pretrained`, the
same code path as a hub model.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path
from typing import Callable

import torch
from filelock import FileLock
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from ..console import progress
from .architectures import TINY_PRESETS

VOCAB_SIZE = 2000
PRETRAIN_FORMAT = "eos"  # in the cache key: documents end with EOS (earlier builds separated them with PAD)
EOS, PAD, IM_START = "<|im_end|>", "<|endoftext|>", "<|im_start|>"
# ChatML, as Qwen2.5-Instruct uses, without Qwen's default system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def fingerprint(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def train_tokenizer(corpus: list[str], vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, IM_START, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=EOS, pad_token=PAD, additional_special_tokens=[IM_START]
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(preset: str | dict, tokenizer: PreTrainedTokenizerFast, seed: int) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 of a preset's size (or of explicit Qwen2Config sizes)."""
    if isinstance(preset, str) and preset not in TINY_PRESETS:
        raise ValueError(f"unknown tiny preset {preset!r}; choose one of {', '.join(TINY_PRESETS)}")
    sizes = TINY_PRESETS[preset] if isinstance(preset, str) else preset
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **sizes,
    )
    return Qwen2ForCausalLM(config)


def pretrain(
    model: Qwen2ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    corpus: list[str],
    steps: int,
    seed: int,
    block_size: int = 256,
    batch_size: int = 16,
    lr: float = 3e-3,
) -> list[float]:
    """Next-token pretraining on the corpus, packed into blocks; returns the loss per step."""
    ids = []
    for text in corpus:
        # Each document ends with EOS, as an instruct model's turns end with it: the preset knows how
        # to stop before fine-tuning, so fine-tuned outputs end where their references end.
        ids.extend(tokenizer(text)["input_ids"] + [tokenizer.eos_token_id])
    if len(ids) < 2:
        raise ValueError(
            "the pretraining corpus (the training split's queries and outputs) is empty: "
            "give data with training records, or a hub model / local path instead of a tiny preset"
        )
    block_size = min(block_size, len(ids))  # a corpus shorter than one block is one block
    blocks = torch.tensor(ids[: len(ids) // block_size * block_size]).view(-1, block_size)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    model.train()
    losses = []
    for _ in progress(range(steps), steps, f"pretrain {model.config.hidden_size}d"):
        batch = blocks[torch.randint(len(blocks), (batch_size,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step(), schedule.step(), optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


def ensure_pretrained(preset: str, corpus: Callable[[], list[str]], steps: int, seed: int, cache_dir: str) -> Path:
    """The directory of `preset` pretrained on `corpus()`; built once, then reused.

    Safe under several processes (DDP ranks): one builds under a file lock, the others wait.
    """
    texts = corpus()
    root = Path(cache_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    key = f"{preset}-corpus{fingerprint(texts)}-vocab{VOCAB_SIZE}-steps{steps}-seed{seed}-{PRETRAIN_FORMAT}"
    target = root / "tiny" / key
    with FileLock(str(root / f"{key}.lock")):
        if (target / "config.json").exists():
            return target
        tokenizer = _cached_tokenizer(texts, root)
        # A forked RNG: building here (cold cache) must leave the run's random state, and so its
        # LoRA init and data order, as loading from a warm cache does.
        with torch.random.fork_rng(devices=[]):
            model = build_model(preset, tokenizer, seed)
            if steps > 0:
                losses = pretrain(model, tokenizer, texts, steps, seed)
                print(f"pretrained {preset}: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {steps} steps")
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    return target


def corpus_tokenizer(corpus: list[str], cache_dir: str) -> PreTrainedTokenizerFast:
    """The presets' tokenizer for `corpus`, the one ensure_pretrained builds with, without a model."""
    root = Path(cache_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return _cached_tokenizer(corpus, root)


def _cached_tokenizer(texts: list[str], root: Path) -> PreTrainedTokenizerFast:
    """One tokenizer per corpus, shared by every preset so Reasoner and Generator agree."""
    location = root / "tokenizers" / f"bpe{VOCAB_SIZE}-corpus{fingerprint(texts)}"
    with FileLock(str(location) + ".lock"):
        if not (location / "tokenizer.json").exists():
            staging = location.with_name(location.name + ".tmp")
            shutil.rmtree(staging, ignore_errors=True)
            train_tokenizer(texts).save_pretrained(staging)
            staging.rename(location)
    return PreTrainedTokenizerFast.from_pretrained(location)
