"""The commands users type: fit, table, bench train/decode (functional checks; nothing is timed here)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from flythinker_pl.cli import main
from flythinker_pl.config import load_config, to_yaml

from helpers import DEBUG_CONFIG


def overrides(run_config):
    cfg = run_config()
    return [
        f"data.synthetic_dir={cfg.data.synthetic_dir}",
        f"logging.cache_dir={cfg.logging.cache_dir}",
        f"logging.root_dir={cfg.logging.root_dir}",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
    ]


def test_fit_then_table(run_config, capsys):
    args = overrides(run_config)
    assert main(["fit", "-c", str(DEBUG_CONFIG), *args, "trainer.enable_progress_bar=true"]) == 0
    log = capsys.readouterr().out  # not a terminal: progress as lines, no bars redrawn with \r
    assert "train step 2/2, loss" in log and "validation at step 0: val/loss" in log and "\r" not in log
    assert main(["fit", "-c", str(DEBUG_CONFIG), *args, "method=sft", "logging.experiment=tiny_sft"]) == 0
    root = run_config().logging.root_dir
    capsys.readouterr()
    assert main(["table", f"{root}/tiny", f"{root}/tiny_sft"]) == 0
    table = capsys.readouterr().out
    assert "| run" in table and "flythinker" in table and "sft" in table
    assert "val loss" in table and " -> " in table  # before -> after training, rounded
    assert main(["table", f"{root}/tiny", "--all"]) == 0
    assert "val/loss_before" in capsys.readouterr().out
    checkpoint = f"{root}/tiny/version_0/checkpoints/last.ckpt"
    assert (
        main(["predict", "-c", str(DEBUG_CONFIG), *args, "trainer.enable_progress_bar=true", f"ckpt_path={checkpoint}"])
        == 0
    )
    assert "decoding batch 1/1" in capsys.readouterr().out  # 10 test records, decode.batch_size 16


def test_a_failed_fit_leaves_no_version_folder(run_config, monkeypatch, capsys):
    import lightning as L

    def broken(*args, **kwargs):
        raise FileNotFoundError("some data file")

    monkeypatch.setattr(L.Trainer, "validate", broken)
    assert main(["fit", "-c", str(DEBUG_CONFIG), *overrides(run_config)]) == 2
    root = Path(run_config().logging.root_dir)
    assert not root.exists() or not any(root.rglob("version_*"))


def test_interrupts_say_that_rerunning_continues(monkeypatch, capsys):
    import flythinker_pl.cli as cli
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    def interrupted(args):
        raise KeyboardInterrupt

    def terminated(args):
        raise SIGTERMException

    monkeypatch.setitem(cli.COMMANDS, "fit", interrupted)
    assert main(["fit", "-c", str(DEBUG_CONFIG)]) == 130
    assert "interrupted (SIGINT): rerun the same command to continue" in capsys.readouterr().err
    monkeypatch.setitem(cli.COMMANDS, "run", terminated)
    assert main(["run", "-c", str(DEBUG_CONFIG)]) == 143
    assert "interrupted (SIGTERM): rerun the same command" in capsys.readouterr().err

    def like_lightning(args):  # Ctrl-C inside a Trainer: Lightning shuts down, then sys.exit(1)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            sys.exit(1)

    monkeypatch.setitem(cli.COMMANDS, "fit", like_lightning)
    assert main(["fit", "-c", str(DEBUG_CONFIG)]) == 130
    assert "rerun the same command to continue" in capsys.readouterr().err


def test_bench_train_reports_every_variant_with_ratios(run_config, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "train",
                "-c",
                str(DEBUG_CONFIG),
                *overrides(run_config),
                "--batches",
                "1",
                "--repeats",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads(out.read_text())["results"]
    assert [r["method"] for r in results] == [
        "sft",
        "flythinker (reasoner frozen)",
        "flythinker (reasoner lora)",
        "flythinker (reasoner full)",
        *(f"coconut (k={k})" for k in (0, 1, 2, 4)),
    ]
    assert results[0]["ratio to sft"] == 1.0
    assert all(r["tokens/s"] > 0 for r in results)
    assert "ratio to sft" in capsys.readouterr().out


def test_bench_decode_checks_every_engine_against_its_reference(run_config, tmp_path, capsys):
    out = tmp_path / "decode.json"
    assert (
        main(
            [
                "bench",
                "decode",
                "-c",
                str(DEBUG_CONFIG),
                *overrides(run_config),
                "--new-tokens",
                "4",
                "--batch-sizes",
                "1",
                "3",
                "--repeats",
                "1",
                "--out",
                str(out),
                "--no-compile",
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    results = report["results"]
    names = [
        "sft",
        "sft (peft path)",
        "sft (HF generate)",
        "flythinker sequential",
        "flythinker staggered",
        "flythinker shared",
    ]
    assert [r["method"] for r in results] == names * 2
    assert [r["batch"] for r in results] == [1] * 6 + [3] * 6
    assert all(r["greedy == reference"] is True for r in results)
    assert all(r["ms/token"] > 0 and r["prefill ms"] > 0 for r in results) and results[0]["/ sft"] == 1.0
    assert all(r["with prefill / HF generate"] > 0 and r["prefill / sft"] > 0 for r in results)
    floor = report["prompt pass floor"]["3"]
    flops_ratio = floor["flythinker GFLOP"] / floor["sft GFLOP"]
    assert 1 < floor["floor (flythinker / sft)"] == pytest.approx(flops_ratio, abs=0.01)
    assert floor["reasoner pass ms"] > 0 and floor["timed floor (sft prefill + reasoner pass) / sft prefill"] > 1
    fastest = min(
        (r for r in results if r["batch"] == 3 and r["method"].startswith("flythinker")),
        key=lambda r: r["prefill / sft"],
    )
    assert (floor["best engine"], floor["best prefill / sft"]) == (fastest["method"], fastest["prefill / sft"])
    printed = capsys.readouterr().out
    assert "bench decode: batch 3: warm-up flythinker shared (6/6)" in printed
    assert "cannot go below" in printed and "two passes cannot go below" in printed


def test_table_without_finished_runs_is_a_clear_error(tmp_path, capsys):
    assert main(["table", str(tmp_path)]) == 2
    assert "no finished run" in capsys.readouterr().err


def test_saved_config_round_trips(run_config, tmp_path):
    cfg = run_config("fusion.lam=1.5")
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(cfg))
    assert load_config(saved) == cfg


def test_data_stats_and_show(run_config, capsys):
    args = overrides(run_config)
    assert main(["data", "stats", "-c", str(DEBUG_CONFIG), *args]) == 0
    stats = capsys.readouterr().out
    assert "train" in stats and "test" in stats and "target words" in stats
    assert main(["data", "show", "-c", str(DEBUG_CONFIG), *args, "--split", "val", "--index", "1"]) == 0
    assert "Following the given patterns" in capsys.readouterr().out
    assert main(["data", "show", "-c", str(DEBUG_CONFIG), *args, "--index", "100000"]) == 2
    assert "error:" in capsys.readouterr().err


def test_data_stats_and_show_include_the_rationales_a_cot_run_trains_on(run_config, capsys):
    args = [*overrides(run_config), "method=cot", "data.rationales=oracle"]
    assert main(["data", "stats", "-c", str(DEBUG_CONFIG), *args, "--tokens"]) == 0
    stats = capsys.readouterr().out
    assert "with a rationale" in stats and "hit rationale budget" in stats
    assert main(["data", "show", "-c", str(DEBUG_CONFIG), *args, "--index", "0"]) == 0
    shown = capsys.readouterr().out
    assert "----- rationale" in shown and "in that order" in shown  # the oracle's wording


def test_config_errors_come_before_any_heavy_import():
    """A typo'd key fails at once: no torch, Lightning or transformers is imported before the check."""
    import subprocess
    import sys

    script = (
        "import sys; from flythinker_pl.cli import main\n"
        "for command in ('run', 'fit', 'predict', 'data stats', 'pretrain'):\n"
        "    assert main([*command.split(), '-c', 'experiments/demo.yaml', 'fusion.lamm=1']) == 2\n"
        "heavy = [m for m in ('torch', 'lightning', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=DEBUG_CONFIG.parents[2])
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("unknown config key 'fusion.lamm'") == 5


def test_predict_needs_a_checkpoint_or_an_explicit_zero_shot(run_config, capsys):
    args = [*overrides(run_config), "decode.max_new_tokens=2", "decode.split=val"]
    root = Path(run_config().logging.root_dir)
    assert main(["predict", "-c", str(DEBUG_CONFIG), *args]) == 2
    assert "ckpt_path=none" in capsys.readouterr().err
    assert main(["predict", "-c", str(DEBUG_CONFIG), *args, "ckpt_path=missing/last.ckpt"]) == 2
    assert "no such checkpoint file" in capsys.readouterr().err
    sharded = Path(run_config().logging.root_dir).parent / "fsdp" / "checkpoints" / "last.ckpt"
    sharded.mkdir(parents=True)  # what trainer.strategy=fsdp saves: a folder of one file per rank
    assert main(["predict", "-c", str(DEBUG_CONFIG), *args, f"ckpt_path={sharded}"]) == 2
    assert "sharded (FSDP) checkpoint folder" in capsys.readouterr().err
    assert not root.exists() or not any(root.rglob("version_*"))  # nothing built, no folder left behind
    assert main(["predict", "-c", str(DEBUG_CONFIG), *args, "ckpt_path=none"]) == 0  # zero-shot, asked for
    assert list(root.rglob("predictions.jsonl"))


def test_a_hub_id_offline_is_one_error_line_naming_the_key_and_the_fix(run_config, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert (
        main(["fit", "-c", str(DEBUG_CONFIG), *overrides(run_config), "reasoner.name=Qwen/Qwen2.5-0.5B-Instruct"]) == 2
    )
    stderr = capsys.readouterr().err  # (may also hold the Generator preset's pretraining bar)
    [error] = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in stderr and error.startswith("error: reasoner.name='Qwen/Qwen2.5-0.5B-Instruct'")
    assert "HF_HUB_OFFLINE=1" in error and "local path" in error


# ---- commands that never mislead -----------------------------------------------------------------


def no_version_folder(run_config) -> bool:
    root = Path(run_config().logging.root_dir)
    return not root.exists() or not any(root.rglob("version_*"))


def test_fit_and_run_refuse_a_checkpoint_path_and_name_the_resume_key(run_config, capsys):
    for command in ("fit", "run"):  # today's fit trained a fresh run and exited 0
        assert main([command, "-c", str(DEBUG_CONFIG), *overrides(run_config), "ckpt_path=/tmp/nope/last.ckpt"]) == 2
        error = capsys.readouterr().err
        assert "ckpt_path= is `flythinker predict`'s" in error and "train.resume=/tmp/nope/last.ckpt" in error
    assert no_version_folder(run_config)


def test_a_resume_from_a_missing_checkpoint_fails_before_announcing_anything(run_config, capsys):
    assert main(["fit", "-c", str(DEBUG_CONFIG), *overrides(run_config), "train.resume=/missing/last.ckpt"]) == 2
    printed = capsys.readouterr()
    assert "Resuming" not in printed.out and "parameters trainable" not in printed.out  # nothing built or said
    assert "error: train.resume=/missing/last.ckpt: no such checkpoint" in printed.err
    assert no_version_folder(run_config)


def test_data_stats_counts_without_building_any_model(run_config, monkeypatch, capsys):
    from flythinker_pl.models import tiny

    def forbidden(*args, **kwargs):
        raise AssertionError("data stats built a model")

    monkeypatch.setattr(tiny, "ensure_pretrained", forbidden)  # today: every `data` command pretrained presets
    monkeypatch.setattr(tiny, "build_model", forbidden)
    args = ["data", "stats", "-c", str(DEBUG_CONFIG), *overrides(run_config)]
    assert main(args) == 0
    stats = capsys.readouterr().out
    assert "| records " in stats and "query words" in stats and "prompt tokens" not in stats
    assert main([*args, "--tokens"]) == 0  # token statistics: from the tokenizer alone
    assert "prompt tokens p50" in capsys.readouterr().out
    assert main(["data", "show", "-c", str(DEBUG_CONFIG), *overrides(run_config), "--index", "0"]) == 0


def test_a_tiny_evaluation_says_its_interval_means_nothing(tmp_path, capsys):
    run_dir = tmp_path / "one" / "version_0"
    run_dir.mkdir(parents=True)
    (run_dir / "predictions.jsonl").write_text(
        json.dumps({"id": 0, "prediction": "a fine warm sound", "reference": "a warm sound"}) + "\n"
    )
    assert main(["evaluate", str(run_dir), "eval.n_bootstrap=50"]) == 0
    printed = capsys.readouterr().out
    assert "scored over 1 record(s)" in printed and "means nothing" in printed  # today: a bare [x, x] interval
    assert main(["table", str(run_dir)]) == 0
    printed = capsys.readouterr().out
    assert "(n=1, no interval)" in printed and "means nothing" in printed


def test_an_offline_hub_id_fails_in_a_blink_before_any_heavy_import(tmp_path):
    """Today the error came after ~20 s of torch/transformers imports; the local cache answers first."""
    import subprocess

    script = (
        "import sys; from flythinker_pl.cli import main\n"
        "assert main(['fit', '-c', 'experiments/demo.yaml', 'reasoner.name=Qwen/Qwen2.5-0.5B-Instruct']) == 2\n"
        "heavy = [m for m in ('torch', 'lightning', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # an empty Hugging Face cache
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=DEBUG_CONFIG.parents[2]
    )
    assert result.returncode == 0, result.stderr
    [error] = result.stderr.splitlines()
    assert error.startswith("error: reasoner.name='Qwen/Qwen2.5-0.5B-Instruct' is neither a local folder")
    assert "HF_HUB_OFFLINE=1" in error
