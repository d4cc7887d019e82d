"""Shared fixtures: a tokenizer trained on a small synthetic corpus, random tiny Qwen2 models of any
size and each method of the test grid (helpers.METHODS) on them, a debug run config whose data,
cache and logs live in a temporary directory, local model folders, the settings of end-to-end runs,
sweep files and a one-node SLURM. Plain helpers (and the grid's axes) live in helpers.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import submitit  # noqa: F401  configures logging on import (dictConfig closes the handlers there): not mid-capture
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# `make test` runs two pytest-xdist workers, one per core: one thread each, or they fight for the cores
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))

from flythinker_pl.config import BackboneConfig, FusionConfig, load_config  # noqa: E402
from flythinker_pl.data import synthetic  # noqa: E402
from flythinker_pl.lit.run import build  # noqa: E402
from flythinker_pl.models import tiny  # noqa: E402
from flythinker_pl.models.backbones import decoder_of, lora_config, set_mode  # noqa: E402
from flythinker_pl.models.baselines import Coconut  # noqa: E402
from flythinker_pl.models.flythinker import FlyThinker  # noqa: E402
from flythinker_pl.models.fusion import LatentFusion  # noqa: E402
from flythinker_pl.models.sft import SFT  # noqa: E402
from flythinker_pl.models.shared import SharedBaseFlyThinker  # noqa: E402

from helpers import DEBUG_CONFIG, FAST, LAM, randomise_lora, save_tiny_model, sizes, static_of  # noqa: E402


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


@pytest.fixture
def make_method(make_flythinker, request):
    """make_method(name): the grid's method `name` (helpers.METHODS) on random tiny models, lambda LAM."""

    def make(name: str):
        if name == "shared":
            return request.getfixturevalue("shared_model")
        flythinker = make_flythinker(32, 64, lam=LAM, **({"span": "response"} if name == "static" else {}))
        return {
            "sft": lambda: SFT(flythinker.generator),
            "flythinker": lambda: flythinker,
            "static": lambda: static_of(flythinker),
            "coconut": lambda: Coconut(flythinker.generator, thoughts=2),
        }[name]()

    return make


@pytest.fixture
def run_config(tmp_path, synthetic_dir):
    """The debug config with data, model cache and logs in temporary directories."""
    cache = tmp_path.parent / "model-cache"  # shared by the tests of one session (pretraining is cached)

    def make(*overrides: str):
        return load_config(
            DEBUG_CONFIG,
            [
                f"data.synthetic_dir={synthetic_dir.parent}",
                f"logging.cache_dir={cache}",
                f"logging.root_dir={tmp_path / 'logs'}",
                *overrides,
            ],
        )

    return make


@pytest.fixture
def write_sweep(run_config):
    """write_sweep(directory, *overrides, **keys): a sweep file on the debug config, FAST, `overrides`
    for every point after it, `keys` over the file's defaults; its runs under directory/logs."""
    cfg = run_config()

    def write(directory: Path, *overrides: str, **keys) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        spec = {
            "name": "tiny",
            "base": str(DEBUG_CONFIG),
            "seeds": [0, 1],
            "grid": {"fusion.lam": [0.5, 2.0]},
            "overrides": [
                f"data.synthetic_dir={cfg.data.synthetic_dir}",
                f"logging.cache_dir={cfg.logging.cache_dir}",
                f"logging.root_dir={directory / 'logs'}",
                *FAST,
                *overrides,
            ],
            **keys,
        }
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


@pytest.fixture
def local_models(tmp_path, tokenizer):
    return [
        f"generator.name={save_tiny_model(tmp_path, 'gen', 64, tokenizer)}",
        f"reasoner.name={save_tiny_model(tmp_path, 'rea', 32, tokenizer, seed=5)}",
    ]


@pytest.fixture(scope="module")
def settings(tmp_path_factory, synthetic_dir) -> list[str]:
    """Data and the session's model cache, with the tiny backbones built once before any run."""
    cache = tmp_path_factory.getbasetemp() / "model-cache"  # the same as conftest's run_config
    overrides = [f"data.synthetic_dir={synthetic_dir.parent}", f"logging.cache_dir={cache}"]
    build(load_config(DEBUG_CONFIG, overrides))
    return overrides


@pytest.fixture
def shared_model(tokenizer):
    generator = tiny.build_model(sizes(64), tokenizer, seed=3)
    peft_model = set_mode(generator, BackboneConfig(mode="lora"), "generator", "CAUSAL_LM")
    peft_model.add_adapter("reasoner", lora_config(BackboneConfig(), "CAUSAL_LM"))
    randomise_lora(peft_model, std=0.05)  # distinct, nonzero adapters: "which adapter ran" shows in the output
    return SharedBaseFlyThinker(peft_model, LatentFusion(64, 64, FusionConfig(lam=LAM))).eval()
