"""`flythinker sweep`: validation before any run, resume after an interruption, mean/std tables."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from flythinker_pl.cli import main
from flythinker_pl.config import load_config
from flythinker_pl.evaluation.sweep_report import summary_table
from flythinker_pl.lit import launch
from flythinker_pl.sweep import runs as sweep_module
from flythinker_pl.sweep.runs import aggregate, plan, run_sweep
from flythinker_pl.sweep.spec import SweepError, load_sweep

from helpers import ROOT, fake_run


def file_stamps(run_dir: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


@pytest.mark.slow  # multi-process / hundreds of steps: make test-slow runs it, and CI
def test_an_interrupted_sweep_resumes_and_gives_the_uninterrupted_table(
    write_sweep, run_config, tmp_path, monkeypatch, one_thread
):
    path = write_sweep(tmp_path / "interrupted")
    finished, real_run = [], sweep_module.run_experiment

    def interrupt_after_two_runs(cfg):
        if len(finished) == 2:
            raise KeyboardInterrupt
        finished.append(real_run(cfg))
        return finished[-1]

    monkeypatch.setattr(sweep_module, "run_experiment", interrupt_after_two_runs)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(load_sweep(path))
    monkeypatch.undo()
    assert plan(load_sweep(path))["status"].tolist() == ["done", "done", "new", "new"]
    stamps = {run_dir: file_stamps(run_dir) for run_dir in finished}

    table, segments = run_sweep(load_sweep(path))
    for run_dir, before in stamps.items():  # finished runs reused as they were: no retraining, no new version
        assert file_stamps(run_dir) == before
        assert [p.name for p in run_dir.parent.iterdir()] == ["version_0"]
    assert table.index.tolist() == ["fusion.lam=0.5", "fusion.lam=2.0"]
    assert table["n_seeds"].tolist() == [2, 2]
    assert {
        "val/loss",
        "val/loss_std",
        "test/bleu",
        "test/rougeL_std",
        "test/meteor",
        "perf/train_tokens_per_s",
        "decode/ms_per_token",
        "decode/seconds_per_sample",
    } <= set(table)

    fresh_table, fresh_segments = run_sweep(load_sweep(write_sweep(tmp_path / "uninterrupted")))
    # Same seeds, same CPU, same thread count: the same numbers (a tolerance only for summation order).
    # Timings measure this machine's speed at the time, so they are compared for presence only.
    measured = [c for c in table if not c.startswith(("perf/", "decode/"))]
    assert list(table) == list(fresh_table)
    pd.testing.assert_frame_equal(table[measured], fresh_table[measured], rtol=1e-6)
    pd.testing.assert_frame_equal(segments, fresh_segments, rtol=1e-6)
    results = path.parent / "results" / "tiny"
    for name in (
        "table.csv",
        "table.md",
        "runs.csv",
        "segments.csv",
        "segments.md",
        "position_eval.png",
        "metrics.png",
        "metrics_vs_fusion.lam.png",
    ):
        assert (results / name).exists(), name
    pd.testing.assert_frame_equal(pd.read_csv(results / "table.csv", index_col="point"), table, check_names=False)


def test_dry_run_lists_runs_and_runs_nothing(write_sweep, tmp_path, capsys):
    path = write_sweep(tmp_path, points=[{"label": "sft", "overrides": ["method=sft"]}])
    assert main(["sweep", str(path), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "ablation_tiny/fusion.lam=2.0,seed=1" in printed and "ablation_tiny/sft,seed=0" in printed
    assert printed.count("| new") == 6
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    "keys,message",
    [
        ({"grids": {}}, "unknown key 'grids'"),
        ({"grid": {}}, "'grid' must map config keys"),
        ({"grid": {"fusion.lam": []}}, "grid key 'fusion.lam' needs a non-empty list"),
        ({"grid": {"fusion.lamb": [1]}}, "unknown config key 'fusion.lamb'"),
        ({"grid": {"fusion.dims": ["diagonal"]}}, "fusion.dims='diagonal' is not allowed"),
        ({"overrides": ["trainer.max_stepz=3"]}, "overrides: unknown config key 'trainer.max_stepz'"),
        ({"overrides": ["seed=3"]}, "'seed' is set by the sweep itself"),
        ({"points": [{"label": "sft", "overides": ["method=sft"]}]}, "points[0]: unknown key 'overides'"),
        ({"points": [{"overrides": ["method=sft"]}]}, "points[0]: needs a `label`"),
        ({"points": [{"label": "fusion.lam=0.5", "overrides": []}]}, "label 'fusion.lam=0.5' is used twice"),
        ({"seeds": []}, "'seeds' must be a non-empty list"),
        ({"base": "missing.yaml"}, "base: no such config file"),
    ],
)
def test_bad_sweep_files_fail_before_any_run_naming_file_and_key(write_sweep, tmp_path, capsys, keys, message):
    path = write_sweep(tmp_path, **keys)
    assert main(["sweep", str(path)]) == 2
    error = capsys.readouterr().err
    assert str(path) in error and message in error
    assert not (tmp_path / "logs").exists()


def test_a_command_line_override_error_names_the_key(write_sweep, tmp_path, capsys):
    assert main(["sweep", str(write_sweep(tmp_path)), "--dry-run", "fusion.spam=global"]) == 2
    assert "command-line override: unknown config key 'fusion.spam'" in capsys.readouterr().err


def test_aggregate_takes_mean_and_sample_std_over_seeds_from_run_dirs(write_sweep, tmp_path, capsys):
    path = write_sweep(tmp_path, points=[{"label": "sft", "overrides": ["method=sft"]}])
    sweep = load_sweep(path)
    values = {
        ("fusion.lam=0.5", 0): 1.0,
        ("fusion.lam=0.5", 1): 3.0,
        ("fusion.lam=2.0", 0): 2.0,
        ("fusion.lam=2.0", 1): 2.5,
        ("sft", 0): 4.0,
    }  # sft seed 1 never finished
    for run in sweep.runs:
        value = values.get((run.point.label, run.seed))
        if value is not None:
            sweep_only = {"lambda_sweep/val_loss@10": value} if run.point.label == "fusion.lam=2.0" else {}
            fake_run(
                run.config,
                {"val/loss": value, "test/bleu": 10 * value, "lambda_sweep/val_loss@2": value, **sweep_only},
                [value, 0.1, value / 2, 0.2],
            )

    table, segments = aggregate(sweep)
    assert table.index.tolist() == ["fusion.lam=0.5", "fusion.lam=2.0", "sft"]
    assert table["n_seeds"].tolist() == [2, 2, 1]
    assert table["val/loss"].tolist() == [2.0, 2.25, 4.0]
    assert table["val/loss_std"].iloc[0] == pytest.approx(math.sqrt(2))  # sample std (ddof=1) of 1 and 3
    assert table["test/bleu_std"].iloc[1] == pytest.approx(math.sqrt(0.125) * 10)
    assert math.isnan(table["val/loss_std"].iloc[2])  # one seed: no spread
    assert table["fusion.lam"].tolist()[:2] == [0.5, 2.0] and math.isnan(table["fusion.lam"].iloc[2])
    assert "perf/train_tokens_per_s" not in table  # absent from every run: no column
    metric_order = [c for c in table if c.startswith("lambda_sweep") and not c.endswith("_std")]
    assert metric_order == ["lambda_sweep/val_loss@2", "lambda_sweep/val_loss@10"]
    assert segments.loc["0-4", "bleu (fusion.lam=0.5)"] == 2.0 and segments.loc["4-8", "bleu (sft)"] == 2.0
    assert segments.loc["0-4", "count (fusion.lam=2.0)"] == 3

    results = path.parent / "results" / "tiny"
    markdown = (results / "table.md").read_text()
    assert "2 ± 1.4" in markdown and "| sft" in markdown
    assert (results / "lambda_sweep.png").exists() and (results / "metrics_vs_fusion.lam.png").exists()
    assert main(["sweep", str(path), "--aggregate-only"]) == 0
    printed = capsys.readouterr().out
    assert "sft,seed=1" in printed.split("Not finished yet")[1].split("Sweep")[0]  # listed as left out
    assert "2.25" in printed


def test_summary_without_grid_keys_keeps_point_order():
    runs = pd.DataFrame(
        {
            "point": ["b", "a", "b"],
            "seed": [0, 0, 1],
            "val/loss": [1.0, 5.0, 2.0],
            "test/answer_accuracy": [0.5, 0.9, 0.7],
        }
    )  # eval.answer_pattern runs
    table = summary_table(runs)
    assert table.index.tolist() == ["b", "a"] and table["val/loss"].tolist() == [1.5, 5.0]
    assert table["test/answer_accuracy"].tolist() == pytest.approx([0.6, 0.9])


@pytest.mark.parametrize(
    "path", sorted(p for p in (ROOT / "ablations").glob("*.yaml") if not p.name.startswith("_")), ids=lambda p: p.name
)
def test_shipped_sweeps_validate(path):
    sweep = load_sweep(path)
    assert sweep.runs and sweep.results_dir == ROOT / "ablations" / "results" / path.stem
    assert len({run.config.logging.experiment for run in sweep.runs}) == len(sweep.runs)


def test_the_reasoner_size_sweep_compares_sizes_with_one_projection_and_an_sft_reference():
    sweep = load_sweep(ROOT / "ablations" / "reasoner_size.yaml")
    configs = [run.config for run in sweep.runs]
    assert {c.reasoner.name for c in configs if c.method == "flythinker"} == {"tiny-64", "tiny-128", "tiny-256"}
    assert {c.fusion.dims for c in configs} == {"linear"} and "sft" in {c.method for c in configs}


@pytest.mark.parametrize("path", sorted((ROOT / "experiments" / "gpu").glob("*.yaml")), ids=lambda p: p.name)
def test_gpu_configs_load_offline(path):
    cfg = load_config(path)
    assert cfg.generator.name.startswith("Qwen/Qwen2.5-")
    assert (cfg.data.profile_tokens, cfg.data.input_tokens, cfg.data.target_tokens) == (1250, 300, 1000)
    assert cfg.train.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"


def test_the_baselines_sweep_runs_every_method_from_its_own_config_with_three_seeds_for_sft_and_flythinker():
    sweep = load_sweep(ROOT / "ablations" / "baselines.yaml")
    seeds = {}
    for run in sweep.runs:
        seeds.setdefault(run.point.label, []).append(run.seed)
        assert run.config.logging.experiment == f"ablation_baselines/{run.point.label},seed={run.seed}"
    assert seeds["sft"] == seeds["flythinker"] == [0, 1, 2] and seeds["cot"] == [0]
    methods = {run.point.label: run.config for run in sweep.runs}
    assert methods["nonpers"].data.retriever == "none" and methods["nonpers"].trainer.max_steps == 0
    assert methods["control_no_profile"].reasoner.sees_profile is False
    assert methods["control_random_reasoner"].reasoner.init == "random"
    assert {c.method for c in methods.values()} == {"nonpers", "rag", "sft", "cot", "static", "coconut", "flythinker"}


@pytest.mark.parametrize("devices,processes", [("auto", 1), (1, 1), (2, 2), ("3", 3), ("0,1", 2), ([0, 1, 2], 3)])
def test_a_sweep_counts_the_processes_of_its_runs(run_config, devices, processes):
    assert (
        launch.processes(
            dataclasses.replace(
                run_config(), trainer=dataclasses.replace(run_config().trainer, accelerator="cpu", devices=devices)
            )
        )
        == processes
    )


def test_a_multi_process_sweep_without_torchrun_or_srun_is_refused_before_any_run(write_sweep, tmp_path):
    ddp = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]
    with pytest.raises(SweepError, match=r"point 'fusion.lam=0.5' runs on 2 processes.*torchrun"):
        run_sweep(load_sweep(write_sweep(tmp_path), ddp))
    assert not (tmp_path / "logs").exists()


@pytest.mark.slow  # multi-process / hundreds of steps: make test-slow runs it, and CI
def test_a_sweep_under_torchrun_runs_each_point_once_on_both_ranks(write_sweep, tmp_path):
    """Every rank runs the sweep; rank 0 chooses each point's run dir for both and alone writes the results."""
    path = write_sweep(tmp_path, seeds=[0], points=[{"label": "sft", "overrides": ["method=sft"]}])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "flythinker_pl.cli",
            "sweep",
            str(path),
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.strategy=ddp",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MEMBER: 2/2" in done.stdout + done.stderr  # really two ranks
    runs = tmp_path / "logs" / "ablation_tiny"
    assert {p.name: [v.name for v in p.iterdir()] for p in runs.iterdir()} == {
        "fusion.lam=0.5,seed=0": ["version_0"],
        "fusion.lam=2.0,seed=0": ["version_0"],
        "sft,seed=0": ["version_0"],
    }
    assert done.stdout.count("Results: ") == 1  # printed by rank 0 only
    table = pd.read_csv(tmp_path / "results" / "tiny" / "table.csv", index_col="point")
    assert table.index.tolist() == ["fusion.lam=0.5", "fusion.lam=2.0", "sft"]


def test_seeds_on_the_command_line_replace_every_points_seeds(write_sweep, tmp_path, capsys):
    path = write_sweep(tmp_path, points=[{"label": "sft", "overrides": ["method=sft"], "seeds": [7]}])
    seeds = lambda *overrides: [(run.point.label, run.seed) for run in load_sweep(path, list(overrides)).runs]  # noqa: E731
    assert seeds() == [
        ("fusion.lam=0.5", 0),
        ("fusion.lam=0.5", 1),
        ("fusion.lam=2.0", 0),
        ("fusion.lam=2.0", 1),
        ("sft", 7),
    ]
    assert seeds("seeds=1") == [("fusion.lam=0.5", 0), ("fusion.lam=2.0", 0), ("sft", 0)]
    assert [seed for label, seed in seeds("seeds=3") if label == "sft"] == [0, 1, 2]
    assert seeds("decode.max_new_tokens=4", "seeds=[4, 5]")[:2] == [("fusion.lam=0.5", 4), ("fusion.lam=0.5", 5)]
    for bad in ("seeds=0", "seeds=abc", "seeds=true", "seeds=1.5", "seeds=", "seeds=[1,1]", "seeds=[a]"):
        with pytest.raises(SweepError, match="seeds"):
            load_sweep(path, [bad])
    assert main(["sweep", str(path), "--dry-run", "seeds=-2"]) == 2
    assert "seeds='-2': give a number of seeds (seeds=3 runs seeds 0, 1, 2" in capsys.readouterr().err


def test_declared_seeds_vary_the_training_order_unless_an_override_sets_it(write_sweep, tmp_path):
    """A fully fine-tuned SFT has no random init: `seed` alone would give the same run three times."""
    points = [{"label": "fixed order", "overrides": ["method=sft", "data.seed=7"]}]
    data_seeds = lambda path, *extra: [  # noqa: E731
        (run.point.label, run.seed, run.config.data.seed) for run in load_sweep(path, list(extra)).runs
    ]
    assert data_seeds(write_sweep(tmp_path / "declared", points=points, grid={"fusion.lam": [0.5]})) == [
        ("fusion.lam=0.5", 0, 0),
        ("fusion.lam=0.5", 1, 1),
        ("fixed order", 0, 7),
        ("fixed order", 1, 7),
    ]
    undeclared = write_sweep(tmp_path / "undeclared", "data.seed=3", seeds=None)
    assert {data_seed for _, _, data_seed in data_seeds(undeclared)} == {3}  # no seeds declared: untouched
    assert {data_seed for _, _, data_seed in data_seeds(write_sweep(tmp_path / "cli", seeds=None), "seeds=[4]")} == {4}


@pytest.mark.slow  # multi-process / hundreds of steps: make test-slow runs it, and CI
def test_a_local_sweep_two_at_once_ends_with_the_inline_table(write_sweep, tmp_path, capsys):
    """Two jobs side by side, each on its share of the cores (one thread on 2 cores): the table the
    inline sweep gives on as many threads."""
    points = [{"label": "sft", "overrides": ["method=sft"]}]
    local = write_sweep(tmp_path / "local", seeds=[0], points=points)
    assert main(["sweep", str(local), "--launcher", "local", "--parallel", "2"]) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.endswith(": done") or ": started, job " in line]
    assert [line.split(": ")[1][:7] for line in lines[:2]] == ["started"] * 2  # two at once
    assert sum(line.endswith(": done") for line in lines) == 3 and "thread(s); log " in printed
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        run_sweep(load_sweep(write_sweep(tmp_path / "inline", seeds=[0], points=points)))
    finally:
        torch.set_num_threads(threads)
    tables = [
        pd.read_csv(path / "results" / "tiny" / "table.csv", index_col="point")
        for path in (local.parent, tmp_path / "inline")
    ]
    measured = [c for c in tables[1] if not c.startswith(("perf/", "decode/"))]
    assert tables[0].index.tolist() == ["fusion.lam=0.5", "fusion.lam=2.0", "sft"]
    pd.testing.assert_frame_equal(tables[0][measured], tables[1][measured], check_exact=True)
    assert main(["sweep", str(local), "--launcher", "local"]) == 0  # all done: nothing runs again
    assert ": started" not in capsys.readouterr().out
