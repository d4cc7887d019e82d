"""Lightning predict: predictions.jsonl with every id once, the same under 2-process CPU DDP."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flythinker_pl.data.datamodule import load_split
from flythinker_pl.lit.run import fit, predict
from flythinker_pl.lit.writer import PredictionWriter

from helpers import DEBUG_CONFIG


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predict_from_checkpoint_writes_every_test_id_once(run_config):
    cfg = run_config(
        "trainer.max_steps=2", "trainer.val_check_interval=2", "decode.max_new_tokens=6", "decode.batch_size=3"
    )
    run_dir = fit(cfg)
    output = predict(cfg, str(run_dir / "checkpoints" / "last.ckpt"))
    assert output == run_dir / "predictions.jsonl"
    records = read_jsonl(output)
    expected = load_split(cfg.data, "test").records
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in expected)
    by_id = {r["id"]: r for r in expected}
    for record in records:
        assert record["reference"] == by_id[record["id"]]["output"]  # the full reference
        assert record["prompt"].endswith("<|im_start|>assistant\n")
        assert 1 <= record["new_tokens"] <= 6 and record["ms_per_token"] > 0
    assert (run_dir / "predictions.config.yaml").exists()
    assert not list(run_dir.glob("predictions.rank*.jsonl"))  # shards merged and removed

    few = predict(
        dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, max_records=4)),
        str(run_dir / "checkpoints" / "last.ckpt"),
    )
    assert [r["id"] for r in read_jsonl(few)] == [r["id"] for r in expected[:4]]  # decode.max_records: the first 4


def _predict_cli(cfg, devices: int, experiment: str):
    args = [
        sys.executable,
        "-m",
        "flythinker_pl.cli",
        "predict",
        "-c",
        str(DEBUG_CONFIG),
        f"data.synthetic_dir={cfg.data.synthetic_dir}",
        f"logging.cache_dir={cfg.logging.cache_dir}",
        f"logging.root_dir={cfg.logging.root_dir}",
        f"logging.experiment={experiment}",
        f"trainer.devices={devices}",
        "trainer.strategy=" + ("ddp" if devices > 1 else "auto"),
        "decode.max_new_tokens=5",
        "decode.batch_size=1",
        "decode.do_sample=true",
        "ckpt_path=none",
    ]
    done = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    if devices > 1:
        assert f"MEMBER: {devices}/{devices}" in done.stdout + done.stderr  # really {devices} ranks
    return read_jsonl(next((Path(cfg.logging.root_dir) / experiment).glob("version_*/predictions.jsonl")))


@pytest.mark.slow  # multi-process / hundreds of steps: make test-slow runs it, and CI
def test_two_process_ddp_predictions_equal_single_process(run_config):
    cfg = run_config()
    fit(run_config("trainer.max_steps=1", "trainer.val_check_interval=1"))  # builds the cached backbones once
    single = _predict_cli(cfg, 1, "single")
    ddp = _predict_cli(cfg, 2, "ddp")
    assert [r["id"] for r in ddp] == [r["id"] for r in single]  # each id exactly once, same order
    assert len({r["id"] for r in ddp}) == len(load_split(cfg.data, "test").records)
    assert [r["prediction"] for r in ddp] == [r["prediction"] for r in single]


def test_a_checkpoint_of_another_method_is_refused(run_config):
    sft_run = fit(run_config("method=sft", "trainer.max_steps=1", "trainer.val_check_interval=1"))
    with pytest.raises(RuntimeError, match="lacks .* trainable weights"):
        predict(run_config("method=flythinker", "decode.max_new_tokens=2"), str(sft_run / "checkpoints" / "last.ckpt"))


def test_sigterm_stops_decoding_after_the_current_batch(run_config, monkeypatch):
    cfg = run_config(
        "trainer.max_steps=1", "trainer.val_check_interval=1", "decode.max_new_tokens=2", "decode.batch_size=2"
    )
    run_dir = fit(cfg)
    monkeypatch.setattr(
        PredictionWriter, "on_predict_batch_start", lambda *_: os.kill(os.getpid(), signal.SIGTERM), raising=False
    )
    with pytest.raises(SystemExit):  # Lightning's SIGTERMException
        predict(cfg, str(run_dir / "checkpoints" / "last.ckpt"))
    shard = run_dir / "predictions.rank0.jsonl"
    assert len(read_jsonl(shard)) == 2  # one batch decoded, then stopped
    assert not (run_dir / "predictions.jsonl").exists() and not (run_dir / "predictions.config.yaml").exists()
