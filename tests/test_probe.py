"""`flythinker probe`: probes fitted on training users are scored on users they never saw, can decode an
attribute the features carry and fall to chance on noise, and the command writes its files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from flythinker_pl.cli import main
from flythinker_pl.config import ConfigError, load_config
from flythinker_pl.data.schema import DataError
from flythinker_pl.lit.run import fit
from flythinker_pl.probe.attributes import personas_file, user_labels
from flythinker_pl.probe.features import run_features, window_names
from flythinker_pl.probe.fit import held_out_rows, probe_run, score_probe
from flythinker_pl.probe.run import probe_runs

from helpers import DEBUG_CONFIG


STARTS = (0, 1, 8, 32)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, synthetic_dir):
    """A tiny FlyThinker run trained one step (its checkpoint is loaded) and a zero-shot SFT one (none)."""
    logs = tmp_path_factory.mktemp("probe_logs")

    def train(*overrides):
        return fit(
            load_config(
                DEBUG_CONFIG,
                [
                    f"data.synthetic_dir={synthetic_dir.parent}",
                    f"logging.cache_dir={tmp_path_factory.getbasetemp() / 'model-cache'}",
                    f"logging.root_dir={logs}",
                    "trainer.limit_val_batches=1",
                    "callbacks.samples=0",
                    *overrides,
                ],
            )
        )

    return (
        train("trainer.max_steps=1", "trainer.val_check_interval=1"),
        train("method=sft", "trainer.max_steps=0", "logging.experiment=tiny_sft"),
    )


def split_users(synthetic_dir, split: str) -> set[str]:
    lines = (synthetic_dir / "product_review_user" / f"{split}.jsonl").read_text().splitlines()
    return {json.loads(line)["reviewerId"] for line in lines}


def test_probes_are_fitted_on_training_users_and_scored_on_the_held_out_ones(tiny_runs, synthetic_dir):
    run = run_features(tiny_runs[0], ("val", "test"), STARTS, train_per_user=2)
    train, held_out = held_out_rows(run.records)
    users = run.records["user"]
    assert set(users[train]) == split_users(synthetic_dir, "train")
    assert users[train].value_counts().max() == 2  # each training user's first 2 records
    assert set(users[held_out]) == split_users(synthetic_dir, "val") | split_users(synthetic_dir, "test")
    assert not set(users[train]) & set(users[held_out])
    assert set(run.features) == {"reasoner", "generator"}
    assert run.features["reasoner"].shape[:2] == run.features["generator"].shape[:2] == (len(users), len(STARTS))

    labels = user_labels(personas_file(load_config(tiny_runs[0] / "config.yaml"), tiny_runs[0]))
    frame = probe_run(run, {"arc": labels["arc"]}, window_names(STARTS), n_bootstrap=20)
    first = frame[frame["window"] == "0"]  # every record reaches response position 0
    assert set(first["source"]) == {"reasoner", "generator"}
    assert (first["n_train"] == train.sum()).all() and (first["n_test"] == held_out.sum()).all()
    assert (first["n_test_users"] == len(set(users[held_out]))).all()
    with pytest.raises(ValueError, match="not fitted on"):
        score_probe(
            np.zeros((2, 1)),
            np.array(["a", "b"]),
            np.array(["u1", "u2"]),
            np.zeros((1, 1)),
            np.array(["a"]),
            np.array(["u2"]),
            n_bootstrap=0,
        )


def synthetic_users(rng, n_users: int, classes: int, signal: float, prefix: str):
    """Four records per user; features = signal x one-hot(user's class) + unit noise."""
    label = rng.integers(0, classes, n_users).repeat(4)
    x = rng.normal(size=(len(label), 12))
    x[:, :classes] += signal * np.eye(classes)[label]
    return x, label.astype(str), np.array([f"{prefix}{i}" for i in range(n_users)]).repeat(4)


@pytest.mark.parametrize("signal", [4.0, 0.0])
def test_a_probe_decodes_an_informative_feature_and_falls_to_chance_on_noise(signal):
    rng = np.random.default_rng(0)
    train = synthetic_users(rng, 60, 4, signal, "train")
    held_out = synthetic_users(rng, 30, 4, signal, "test")
    score = score_probe(*train, *held_out, n_bootstrap=200)
    assert score["ci_low"] <= score["accuracy"] <= score["ci_high"] and score["n_test_users"] == 30
    if signal:
        assert score["accuracy"] > 0.9 and score["ci_low"] > score["chance"]
    else:
        assert score["accuracy"] < 0.45 and score["ci_low"] < max(score["chance"], 0.25)


def test_the_command_writes_its_tables_and_plots(tiny_runs, tmp_path, capsys):
    flythinker_run, sft_run = tiny_runs
    out = tmp_path / "probe"
    assert main(["probe", str(flythinker_run), str(sft_run.parent), "--out", str(out), "--n-bootstrap", "20"]) == 0
    for name in ("probe.csv", "probe.md", "probe_vs_position.png", "pca.png"):
        assert (out / name).stat().st_size > 0
    frame = pd.read_csv(out / "probe.csv")
    assert list(frame.columns[:12]) == [
        "run",
        "label",
        "method",
        "source",
        "attribute",
        "window",
        "accuracy",
        "ci_low",
        "ci_high",
        "chance",
        "n_train",
        "n_test",
    ]
    assert set(zip(frame["method"], frame["source"])) == {
        ("flythinker", "reasoner"),
        ("flythinker", "generator"),
        ("sft", "generator"),
    }
    assert frame["accuracy"].between(0, 1).all()
    printed = capsys.readouterr().out
    assert "chance" in printed and "arc" in printed and str(out) in printed


def test_data_without_users_file_is_a_clear_error(tmp_path, synthetic_dir):
    files = {split: synthetic_dir / "product_review_user" / f"{split}.jsonl" for split in ("train", "val", "test")}
    cfg = load_config(DEBUG_CONFIG, [f"data.files.{split}={path}" for split, path in files.items()])
    with pytest.raises(DataError, match="users.jsonl"):
        personas_file(cfg, tmp_path)


def test_the_rule_tasks_latent_truth_gives_every_user_the_value_they_keep(tmp_path):
    from flythinker_pl.data import synthetic_rule

    made = synthetic_rule.generate(tmp_path, num_users=8, items_per_user=4, seed=0)
    labels = user_labels(made / "users.jsonl")
    assert set(labels) == {"keeps", "opener", "mean_rating"}
    assert set(labels["keeps"].values()) <= set(synthetic_rule.VALUES) and len(labels["keeps"]) == 8


def test_the_signature_tasks_latent_truth_gives_every_user_their_word(tmp_path):
    from flythinker_pl.data import synthetic_signature

    made = synthetic_signature.generate(tmp_path, num_users=16, items_per_user=4, reveal="shared", seed=0)
    labels = user_labels(made / "users.jsonl")
    assert set(labels) == {"word", "opener", "mean_rating"}
    assert set(labels["word"].values()) == set(synthetic_signature.WORDS) and len(labels["word"]) == 16


@pytest.mark.parametrize("windows", [[1, 2], [0, 2, 2], [0, 3, 1]])
def test_probe_windows_must_increase_from_0_before_any_run_is_read(tmp_path, capsys, windows):
    with pytest.raises(ConfigError, match="increasing from 0"):
        probe_runs([tmp_path / "nowhere"], starts=tuple(windows))
    assert main(["probe", str(tmp_path / "nowhere"), "--windows", *map(str, windows)]) == 2
    assert "give each window's first response position, increasing from 0" in capsys.readouterr().err
