"""Helpers shared by several test files (their fixtures live in conftest.py); test files import
from here, never from each other."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    CohereConfig,
    Gemma2Config,
    Gemma3TextConfig,
    GraniteConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PreTrainedTokenizer,
    Qwen2Config,
    Qwen3Config,
)

from flythinker_pl.config import CHOICES, BackboneConfig, DataConfig, DecodeConfig, ReasonerConfig, to_yaml
from flythinker_pl.lit.rundirs import EVAL_CONFIG, eval_yaml
from flythinker_pl.models import tiny
from flythinker_pl.models.backbones import decoder_of, set_mode
from flythinker_pl.models.baselines import StaticFlyThinker
from flythinker_pl.models.flythinker import FlyThinker
from flythinker_pl.models.layout import last_prompt_column


# ---- tiny models on disk ----

ROOT = Path(__file__).resolve().parents[1]


DEBUG_CONFIG = ROOT / "experiments" / "debug" / "tiny.yaml"


def sizes(hidden: int, layers: int = 2) -> dict:
    return dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=2 * hidden,
    )


def save_tiny_model(tmp_path: Path, name: str, hidden: int, tokenizer, seed: int = 0) -> str:
    """A tiny model + tokenizer saved as a local folder, which generator.name / reasoner.name accept."""
    path = tmp_path / name
    tiny.build_model(sizes(hidden), tokenizer, seed=seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def no_corpus():
    raise AssertionError("a local model needs no corpus")


def random_lora_backbones(tokenizer):
    """(Generator d=64, Reasoner decoder d=32), LoRA on both, every lora_B random, nonzero and distinct
    (B = 0 would hide a wrong adapter)."""
    generator = set_mode(
        tiny.build_model(sizes(64), tokenizer, seed=1), BackboneConfig(mode="lora"), "generator", "CAUSAL_LM"
    )
    reasoner = set_mode(
        decoder_of(tiny.build_model(sizes(32), tokenizer, seed=2)), ReasonerConfig(mode="lora"), "reasoner", None
    )
    randomise_lora(generator, reasoner)
    return generator, reasoner


def left_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask


# ---- the test grid (as peft's): every axis the tests iterate over, defined once ----

# Each kind of method the tests build (models/build.py): its overrides of a run's config, and the
# decoding engines it runs in (decode.engine; static and coconut step one model, as sft does).
METHODS = {
    "sft": ["method=sft"],
    "flythinker": [],
    "static": ["method=static", "fusion.span=response"],
    "coconut": ["method=coconut", "coconut.k=2"],
    "shared": ["reasoner.shared_base=true"],
}
ENGINES = {"sft": ("sequential",), "flythinker": ("sequential", "staggered"), "shared": ("sequential", "shared")}
LATENT_METHODS = ("flythinker", "shared")  # of ENGINES, those adding a Reasoner's latents (lambda = 0: SFT)

# Who trains: every (generator.mode, reasoner.mode) pair is valid for FlyThinker (the shared base
# needs lora+lora: config.py refuses the rest).
GENERATOR_MODES, REASONER_MODES = CHOICES["generator.mode"], CHOICES["reasoner.mode"]
MODES = [pytest.param(g, r, id=f"{g}+{r}") for g in GENERATOR_MODES for r in REASONER_MODES]

# The fusion's options (DESIGN.md section 4)
DIMS, SPANS, NORMS = CHOICES["fusion.dims"], CHOICES["fusion.span"], CHOICES["fusion.norm"]
LAM = 4.0  # large enough that latents change greedy choices (and logits) of random models visibly

# Backbone families, as tiny random models from each family's config class (test_backbone_families):
# every method runs on every family listed, a shared base included.
WINDOW = 6  # sliding window, shorter than prompt + response
FAMILIES = {  # config class, what the family has beyond Llama (strong enough to matter)
    "llama": (LlamaConfig, {}),
    "mistral": (MistralConfig, dict(sliding_window=WINDOW)),
    "qwen2": (Qwen2Config, {}),
    "qwen3": (Qwen3Config, dict(head_dim=16)),
    "gemma2": (
        Gemma2Config,
        dict(
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=WINDOW,
            final_logit_softcapping=0.3,
            attn_logit_softcapping=2.0,
        ),
    ),
    "gemma3": (
        Gemma3TextConfig,
        dict(
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=WINDOW,
            final_logit_softcapping=0.3,
            layer_types=["sliding_attention", "full_attention"],
        ),
    ),
    "phi3": (Phi3Config, {}),
    "granite": (
        GraniteConfig,
        dict(embedding_multiplier=6.0, logits_scaling=4.0, residual_multiplier=0.5, attention_multiplier=0.2),
    ),
    "cohere": (CohereConfig, dict(logit_scale=4.0)),
}


LORA_TARGETS = {"phi3": "[qkv_proj,o_proj,gate_up_proj,down_proj]"}  # fused projections


def family_config(family: str, hidden: int, tokenizer):
    config_class, extra = FAMILIES[family]
    return config_class(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **extra,
    )


def save_family(directory, family: str, hidden: int, tokenizer, seed: int, config=None) -> str:
    torch.manual_seed(seed)
    path = directory / f"{family}-{hidden}"
    AutoModelForCausalLM.from_config(config or family_config(family, hidden, tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def family_folders(name: str, directory, tokenizer) -> tuple[str, str, str]:
    """(family name, generator folder (d=64), reasoner folder (d=32))."""
    return (
        name,
        save_family(directory, name, 64, tokenizer, seed=1),
        save_family(directory, name, 32, tokenizer, seed=2),
    )


def grid_overrides(folders: tuple[str, str, str], *overrides: str, lam: float = LAM) -> list[str]:
    """A run's config at a point of the grid: the family's models (family_folders), LoRA on both, lambda
    `lam`, then `overrides` (a method's, METHODS)."""
    family, generator, reasoner = folders
    targets = LORA_TARGETS.get(family)
    return [
        f"generator.name={generator}",
        f"reasoner.name={reasoner}",
        "generator.mode=lora",
        "reasoner.mode=lora",
        f"fusion.lam={lam}",
        *([f"generator.lora_targets={targets}", f"reasoner.lora_targets={targets}"] if targets else []),
        *overrides,
    ]


# ---- token rows with a history span ----

RESPONSE_LENGTHS = [6, 3, 4]  # differing, so responses end the rows at different prompt columns


HISTORY = slice(1, 4)  # prompt tokens 1..3 of every row render the user's history


def token_rows(tokenizer, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(3, len(tokenizer), (p + r,), generator=g).tolist()
        for p, r in zip(PROMPT_LENGTHS, RESPONSE_LENGTHS)
    ]


def profile_rows(rows):
    marks = []
    for row in rows:
        mark = [0] * len(row)
        mark[HISTORY] = [1] * len(mark[HISTORY])
        marks.append(mark)
    return marks


def training_batch(tokenizer, rows=None) -> dict:
    rows = rows or token_rows(tokenizer)
    ids, mask = left_padded(rows, tokenizer.pad_token_id)
    prompt_len = torch.tensor(PROMPT_LENGTHS)
    labels = torch.full_like(ids, -100)
    last = last_prompt_column(mask, prompt_len)
    for row in range(len(rows)):
        labels[row, last[row] + 1 :] = ids[row, last[row] + 1 :]
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "prompt_len": prompt_len,
        "labels": labels,
        "profile_mask": left_padded(profile_rows(rows), 0)[0],
    }


def static_of(flythinker: FlyThinker) -> StaticFlyThinker:
    """Static with the same weights, Reasoner and fusion as `flythinker`."""
    return StaticFlyThinker(
        flythinker.generator, flythinker.reasoner, flythinker.fusion, False, flythinker.reasoner_sees_profile
    )


# ---- synthetic data configs ----


def synthetic_cfg(synthetic_dir: Path, **options) -> DataConfig:
    cfg = DataConfig(synthetic_dir=str(synthetic_dir.parent), **options)
    cfg.synthetic.num_users, cfg.synthetic.reviews_per_user = 20, 5
    return cfg


class PythonTokenizer(PreTrainedTokenizer):
    """A slow (Python, no offsets) tokenizer with the fast one's vocabulary and merges."""

    def __init__(self, fast, **kwargs):
        self.fast = fast
        super().__init__(
            eos_token=fast.eos_token, pad_token=fast.pad_token, additional_special_tokens=["<|im_start|>"], **kwargs
        )

    def get_vocab(self):
        return self.fast.get_vocab()

    @property
    def vocab_size(self):
        return self.fast.vocab_size

    def _tokenize(self, text):
        return self.fast.backend_tokenizer.encode(text, add_special_tokens=False).tokens

    def _convert_token_to_id(self, token):
        return self.fast.convert_tokens_to_ids(token)

    def _convert_id_to_token(self, index):
        return self.fast.convert_ids_to_tokens(index)

    def convert_tokens_to_string(self, tokens):
        return self.fast.convert_tokens_to_string(tokens)


# ---- prompts for decoding ----

PROMPTS = [[5, 9, 13, 21, 8], list(range(30, 41)), [7, 7, 3, 19, 44, 52, 61, 12]]


IDS = ["a", "b", "c"]


GREEDY = DecodeConfig(do_sample=False, max_new_tokens=10)


def prompt_batch(tokenizer, order=(0, 1, 2)):
    ids, mask = left_padded([PROMPTS[i] for i in order], tokenizer.pad_token_id)
    return ids, mask, torch.tensor([len(PROMPTS[i]) for i in order]), [IDS[i] for i in order]


@torch.no_grad()
def argmax_chain_matches(method, prompt: list[int], generated: list[int], eos_id: int):
    """Teacher-forced, unbatched: each generated token is the argmax after its prefix."""
    produced = generated + [eos_id] if len(generated) < GREEDY.max_new_tokens else generated
    ids = torch.tensor([prompt + produced])
    logits = method(ids, torch.ones_like(ids), torch.tensor([len(prompt)]))
    chain = logits[0, len(prompt) - 1 : -1].argmax(-1).tolist()
    assert chain == produced


# ---- teacher-forced batches ----

PROMPT_LENGTHS = [5, 9, 7]


RESPONSE_LEN = 6


def batch(tokenizer, seed=0):
    """Rows with different prompt lengths (so left padding differs) and a shared response length."""
    g = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer)
    rows = [torch.randint(3, vocab, (p + RESPONSE_LEN,), generator=g).tolist() for p in PROMPT_LENGTHS]
    ids, mask = left_padded(rows, tokenizer.pad_token_id)
    return ids, mask, torch.tensor(PROMPT_LENGTHS)


# ---- LongLaMP fixtures ----

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "longlamp"


CONFIGS = [
    (task, setting)
    for task in ("product_review", "abstract_generation", "topic_writing")
    for setting in ("user", "temporal")
]


ROOMY = dict(profile_tokens=10_000, input_tokens=10_000, target_tokens=10_000)


def fixture_cfg(task: str = "product_review", setting: str = "user", **options) -> DataConfig:
    return DataConfig(task=task, setting=setting, path=str(FIXTURES), **options)


def raw(task: str, setting: str, split: str) -> list[dict]:
    return json.loads((FIXTURES / f"{task}_{setting}" / f"{split}.json").read_text(encoding="utf-8"))


# ---- spoiled LongLaMP records ----

GOOD = raw("product_review", "user", "train")[0]


def spoiled(change) -> dict:
    record = copy.deepcopy(GOOD)
    change(record)
    return record


def write_jsonl(path, lines: list[bytes]):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def encoded(record) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode("utf-8")


# ---- LoRA weights that expose a wrong dispatch ----


def randomise_lora(*models: torch.nn.Module, seed: int = 0, std: float = 0.1, which: str = "lora_B") -> None:
    """Every `which` weight (lora_B; "lora_" for A too) drawn N(0, std), nonzero and distinct: an
    untrained B = 0 would hide a wrong adapter or dispatch."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for model in models:
            for name, param in model.named_parameters():
                if which in name:
                    param.normal_(0, std)


# ---- training runs in a subprocess ----

# One thread per process: the same arithmetic in the single-process, DDP and torchrun runs.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}


# 80 training records / global batch 8 = 10 steps per epoch: checkpoints at steps 4, 8, 12, 16 are
# mid-epoch, and the run crosses an epoch boundary (step 10) after any of them. Whole responses
# (198-265 tokens), so lengths, padding and the ranks' token counts vary, and buckets matter.
RUN = [
    "trainer.max_steps=20",
    "trainer.val_check_interval=4",
    "trainer.limit_val_batches=1.0",
    "data.target_tokens=600",
    "data.length_buckets=true",
    "data.bucket_chunk_batches=2",
]


def fit_command(settings: list[str], root: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "flythinker_pl.cli",
        "fit",
        "-c",
        str(DEBUG_CONFIG),
        *settings,
        f"logging.root_dir={root}",
        *RUN,
        *overrides,
    ]


def fit_cli(command: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def metrics_of(root: Path) -> dict:
    [run_dir] = (root / "tiny").glob("version_*")  # exactly one run
    return json.loads((run_dir / "metrics.json").read_text())


# ---- sweeps ----

# Runs of a few seconds each: 2 training steps, 8 new tokens, no bootstrap.
FAST = [
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "decode.max_new_tokens=8",
    "eval.n_bootstrap=0",
    "eval.segment_width=4",
    "eval.segment_max=12",
    "callbacks.samples=0",
]


def fake_run(cfg, metrics: dict, segment_values: list[float]) -> Path:
    """A finished, decoded and scored run dir for `cfg`, written by hand."""
    run_dir = Path(cfg.logging.root_dir) / cfg.logging.experiment / "version_0"
    run_dir.mkdir(parents=True)
    for name in ("config.yaml", "predictions.config.yaml"):
        (run_dir / name).write_text(to_yaml(cfg))
    (run_dir / "predictions.jsonl").write_text("")
    (run_dir / EVAL_CONFIG).write_text(eval_yaml(cfg.eval))
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    pd.DataFrame(
        {
            "segment_start": [0, 0, 4, 4],
            "segment_end": [4, 4, 8, 8],
            "metric": ["bleu", "rouge1"] * 2,
            "value": segment_values,
            "count": [3, 3, 2, 2],
        }
    ).to_csv(run_dir / "position_eval.csv", index=False)
    return run_dir
