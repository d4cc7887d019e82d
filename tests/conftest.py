"""Tiny fixtures: a tokenizer trained on a small synthetic corpus, random tiny Qwen2 models of any
size, and a debug run config whose data, cache and logs live in a temporary directory."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import submitit  # noqa: F401  configures logging on import (dictConfig closes the handlers there): not mid-capture
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# `make test` runs two pytest-xdist workers, one per core: one thread each, or they fight for the cores
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))

from flythinker_pl.config import BackboneConfig, FusionConfig, ReasonerConfig, load_config, to_yaml  # noqa: E402
from flythinker_pl.data import synthetic  # noqa: E402
from flythinker_pl.lit.evaluate import EVAL_CONFIG, eval_yaml  # noqa: E402
from flythinker_pl.models import tiny  # noqa: E402
from flythinker_pl.models.backbones import decoder_of, set_mode  # noqa: E402
from flythinker_pl.models.flythinker import FlyThinker  # noqa: E402
from flythinker_pl.models.fusion import LatentFusion  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEBUG_CONFIG = ROOT / "experiments" / "debug" / "tiny.yaml"


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("synthetic"), num_users=20, reviews_per_user=5, seed=0)


@pytest.fixture(scope="session")
def corpus(synthetic_dir) -> list[str]:
    lines = (synthetic_dir / "product_review_user" / "train.jsonl").read_text().splitlines()
    return [json.loads(line)["output"] for line in lines]


@pytest.fixture(scope="session")
def tokenizer(corpus):
    return tiny.train_tokenizer(corpus, vocab_size=600)


def sizes(hidden: int, layers: int = 2) -> dict:
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=2 * hidden)


def save_tiny_model(tmp_path: Path, name: str, hidden: int, tokenizer, seed: int = 0) -> str:
    """A tiny model + tokenizer saved as a local folder, which generator.name / reasoner.name accept."""
    path = tmp_path / name
    tiny.build_model(sizes(hidden), tokenizer, seed=seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def no_corpus():
    raise AssertionError("a local model needs no corpus")


@pytest.fixture
def make_flythinker(tokenizer):
    """FlyThinker from random tiny models: make_flythinker(d_R, d_G, **fusion options)."""

    def make(reasoner_dim=32, generator_dim=64, reasoner_frozen=False, **fusion):
        generator = tiny.build_model(sizes(generator_dim), tokenizer, seed=1).eval()
        reasoner = decoder_of(tiny.build_model(sizes(reasoner_dim), tokenizer, seed=2)).eval()
        with torch.no_grad():  # as in real checkpoints, the pad token has a trained (nonzero)
            for model in (generator, reasoner):  # embedding, so a pad latent would be visible
                model.get_input_embeddings().weight[tokenizer.pad_token_id].normal_(0, 0.02)
        fusion_cfg = FusionConfig(**{"lam": 0.7, **fusion})
        return FlyThinker(generator, reasoner, LatentFusion(reasoner_dim, generator_dim, fusion_cfg), reasoner_frozen)

    return make


def random_lora_backbones(tokenizer):
    """(Generator d=64, Reasoner decoder d=32), LoRA on both, every lora_B random, nonzero and distinct
    (B = 0 would hide a wrong adapter)."""
    generator = set_mode(tiny.build_model(sizes(64), tokenizer, seed=1), BackboneConfig(mode="lora"), "generator",
                         "CAUSAL_LM")
    reasoner = set_mode(decoder_of(tiny.build_model(sizes(32), tokenizer, seed=2)), ReasonerConfig(mode="lora"),
                        "reasoner", None)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in [*generator.named_parameters(), *reasoner.named_parameters()]:
            if "lora_B" in name:
                param.normal_(0, 0.1)
    return generator, reasoner


def left_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids, mask


@pytest.fixture
def run_config(tmp_path, synthetic_dir):
    """The debug config with data, model cache and logs in temporary directories."""
    cache = tmp_path.parent / "model-cache"  # shared by the tests of one session (pretraining is cached)

    def make(*overrides: str):
        return load_config(DEBUG_CONFIG, [f"data.synthetic_dir={synthetic_dir.parent}",
                                          f"logging.cache_dir={cache}", f"logging.root_dir={tmp_path / 'logs'}",
                                          *overrides])

    return make


# Runs of a few seconds each: 2 training steps, 8 new tokens, no bootstrap.
FAST = ["trainer.max_steps=2", "trainer.val_check_interval=2", "decode.max_new_tokens=8", "eval.n_bootstrap=0",
        "eval.segment_width=4", "eval.segment_max=12", "callbacks.samples=0"]


@pytest.fixture
def write_sweep(run_config):
    """write_sweep(directory, *overrides, **keys): a sweep file on the debug config, FAST, `overrides`
    for every point after it, `keys` over the file's defaults; its runs under directory/logs."""
    cfg = run_config()

    def write(directory: Path, *overrides: str, **keys) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        spec = {"name": "tiny", "base": str(DEBUG_CONFIG), "seeds": [0, 1], "grid": {"fusion.lam": [0.5, 2.0]},
                "overrides": [f"data.synthetic_dir={cfg.data.synthetic_dir}",
                              f"logging.cache_dir={cfg.logging.cache_dir}",
                              f"logging.root_dir={directory / 'logs'}", *FAST, *overrides], **keys}
        path = directory / "sweep.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    return write


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread, and a busy machine makes two spinning threads far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fake_run(cfg, metrics: dict, segment_values: list[float]) -> Path:
    """A finished, decoded and scored run dir for `cfg`, written by hand."""
    run_dir = Path(cfg.logging.root_dir) / cfg.logging.experiment / "version_0"
    run_dir.mkdir(parents=True)
    for name in ("config.yaml", "predictions.config.yaml"):
        (run_dir / name).write_text(to_yaml(cfg))
    (run_dir / "predictions.jsonl").write_text("")
    (run_dir / EVAL_CONFIG).write_text(eval_yaml(cfg.eval))
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    pd.DataFrame({"segment_start": [0, 0, 4, 4], "segment_end": [4, 4, 8, 8], "metric": ["bleu", "rouge1"] * 2,
                  "value": segment_values, "count": [3, 3, 2, 2]}).to_csv(run_dir / "position_eval.csv", index=False)
    return run_dir


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real one-node SLURM with accounting for the session (tests/slurm_cluster.py), stopped at its
    end; clients and jobs find it through SLURM_CONF. Where it cannot run (no root, not installed:
    `make slurm`) the tests skip, saying why; under CI=true they fail instead."""
    import slurm_cluster
    from filelock import FileLock

    reason = slurm_cluster.missing()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: the SLURM tests must run, but {reason}")
        pytest.skip(reason)
    with FileLock(str(slurm_cluster.LOCK)):  # the cluster's ports are fixed: one session at a time
        previous = os.environ.get("SLURM_CONF")
        try:
            os.environ.update(slurm_cluster.start())
            yield slurm_cluster
        finally:
            slurm_cluster.stop()
            if previous is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = previous
