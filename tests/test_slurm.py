"""Sweeps on a real one-node SLURM (tests/slurm_cluster.py, started once for the session): every run
a job, results equal to the inline sweep's, a requeued job resumed to the uninterrupted metrics, a
2-task run equal to one process, an afterok dependency, a failed run's error in `status`, no
duplicate on resubmission, and experiments/slurm/train.sbatch. Each job is a tiny run of seconds."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from flythinker_pl.cli import main
from flythinker_pl.lit.launch import SRUN_HINT
from flythinker_pl.sweep import status
from flythinker_pl.sweep.jobs import Manifest, job_paths
from flythinker_pl.sweep.runs import run_sweep
from flythinker_pl.sweep.spec import load_sweep

from helpers import DEBUG_CONFIG, ROOT

pytestmark = pytest.mark.slow
ON_SLURM = {"slurm": {"cpus_per_task": 1, "time": 30}}  # one thread per job, as the inline runs compared


@pytest.fixture
def cluster(slurm_cluster, monkeypatch, one_thread):
    """The session's cluster; `status --wait` polls every second; the inline runs on one thread."""
    monkeypatch.setattr(status, "POLL_SECONDS", 1.0)
    return slurm_cluster


def command(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def slurm(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


def wait_until(ready, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert time.time() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.05)


def jobs_of(sweep_path: Path) -> dict[str, dict]:
    return Manifest(sweep_path.parent / "results" / "tiny").data["runs"]


def log_of(entry: dict, task: int = 0, kind: str = "stdout") -> str:
    """A task's log (its output, or `kind="stderr"`) of a job in the manifest."""
    paths = job_paths(entry)
    paths.task_id = task
    return getattr(paths, kind).read_text()


def measured(table: pd.DataFrame) -> pd.DataFrame:
    """The results that do not measure this machine's speed at the time."""
    return table[[c for c in table if not c.startswith(("perf/", "decode/"))]]


def test_a_sweep_of_slurm_jobs_ends_with_the_inline_table(cluster, write_sweep, tmp_path, capsys):
    keys = {"seeds": [0], "points": [{"label": "sft", "overrides": ["method=sft"]}], "launcher": ON_SLURM}
    path = write_sweep(tmp_path / "slurm", **keys)
    code, printed = command(capsys, "sweep", str(path), "--launcher", "slurm")
    assert code == 0 and "tiny: submitted 3 job(s)" in printed and f"sweep status {path} --wait" in printed
    inline, _ = run_sweep(load_sweep(write_sweep(tmp_path / "inline", **keys)))  # while the jobs run
    code, printed = command(capsys, "sweep", "status", str(path), "--wait")
    assert code == 0, printed
    assert re.search(r"^tiny: 3 done \(\d+ s\)$", printed, re.M)
    assert len(re.findall(r"^ *\S+ +0 +done +\d+(_\d+)? ", printed, re.M)) == 3  # the status lines
    on_slurm = pd.read_csv(path.parent / "results" / "tiny" / "table.csv", index_col="point")
    inline = pd.read_csv(tmp_path / "inline" / "results" / "tiny" / "table.csv", index_col="point")
    assert on_slurm.index.tolist() == ["fusion.lam=0.5", "fusion.lam=2.0", "sft"]
    pd.testing.assert_frame_equal(measured(on_slurm), measured(inline), check_exact=True)  # identical
    for key, entry in jobs_of(path).items():
        log = log_of(entry)
        assert f"{key} in {os.getcwd()}: {sys.executable}, 1 torch threads, HF_HUB_OFFLINE=1" in log
        assert SRUN_HINT not in log_of(entry, kind="stderr")


def test_a_job_requeued_mid_training_ends_with_the_uninterrupted_metrics(cluster, write_sweep, tmp_path, capsys):
    longer = ["trainer.max_steps=200", "trainer.val_check_interval=20"]
    keys = {"seeds": [0], "grid": {"fusion.lam": [0.5]}, "launcher": ON_SLURM}
    path = write_sweep(tmp_path / "slurm", *longer, **keys)
    assert command(capsys, "sweep", str(path), "--launcher", "slurm")[0] == 0
    entry = jobs_of(path)["fusion.lam=0.5,seed=0"]
    job, run_dir = (
        entry["job_id"],
        tmp_path / "slurm" / "logs" / "ablation_tiny" / "fusion.lam=0.5,seed=0" / "version_0",
    )
    wait_until((run_dir / "checkpoints" / "last.ckpt").exists, "the first checkpoint")
    slurm("scancel", "--signal=USR2", job)  # what SLURM sends signal_delay_s before the time limit
    wait_until(lambda: slurm("squeue", "-h", "-j", job, "-o", "%T").strip() == "PENDING", "the requeue")
    assert not (run_dir / "metrics.json").exists()  # stopped mid-training
    slurm("scontrol", "update", f"JobId={job}", "StartTime=now")  # else SLURM holds a requeued job ~2 min
    run_sweep(load_sweep(write_sweep(tmp_path / "inline", *longer, **keys)))  # the uninterrupted run, meanwhile
    code, printed = command(capsys, "sweep", "status", str(path), "--wait")
    assert code == 0, printed
    assert "Restarts=1" in slurm("scontrol", "show", "job", job)  # the same job, requeued once
    log = log_of(entry)
    assert "Requeued job" in log and f"Resuming {run_dir} from {run_dir / 'checkpoints' / 'last.ckpt'}" in log
    assert [p.name for p in run_dir.parent.iterdir()] == ["version_0"]
    resumed = json.loads((run_dir / "metrics.json").read_text())
    uninterrupted = json.loads(next((tmp_path / "inline" / "logs").rglob("metrics.json")).read_text())
    assert resumed["global_step"] == uninterrupted["global_step"] == 200
    validation = {k: v for k, v in uninterrupted.items() if k.startswith("val/")}
    assert {k: resumed[k] for k in validation} == validation  # bit for bit
    assert resumed["test/bleu"] == uninterrupted["test/bleu"]


def test_a_two_task_run_equals_one_process(cluster, write_sweep, tmp_path, capsys):
    """One task per process under srun, Lightning's SLURM environment, gloo; 2 x 4 = 1 x 8 (test_scaleout)."""
    points = [
        {"label": "one_process", "overrides": ["data.batch_size=8"]},
        {"label": "two_tasks", "overrides": ["data.batch_size=4", "trainer.devices=2", "trainer.strategy=ddp"]},
    ]
    path = write_sweep(
        tmp_path,
        "trainer.max_steps=10",
        "trainer.val_check_interval=5",
        seeds=[0],
        grid=None,
        points=points,
        launcher=ON_SLURM,
    )
    assert command(capsys, "sweep", str(path), "--launcher", "slurm")[0] == 0
    code, printed = command(capsys, "sweep", "status", str(path), "--wait")
    assert code == 0, printed
    two_tasks = jobs_of(path)["two_tasks,seed=0"]
    assert "MEMBER: 2/2" in log_of(two_tasks, task=1) + log_of(
        two_tasks, task=1, kind="stderr"
    )  # srun's task 1: rank 1
    metrics = {
        key: json.loads(next((tmp_path / "logs" / "ablation_tiny" / key).rglob("metrics.json")).read_text())
        for key in ("one_process,seed=0", "two_tasks,seed=0")
    }
    one, two = metrics["one_process,seed=0"], metrics["two_tasks,seed=0"]
    assert one["global_step"] == two["global_step"] == 10
    assert two["val/loss_before"] == pytest.approx(one["val/loss_before"], rel=1e-6)
    assert two["val/loss"] == pytest.approx(one["val/loss"], rel=1e-5)


def test_coconut_official_waits_for_its_cot_run(cluster, write_sweep, tmp_path, capsys):
    rationales = ["data.rationales=oracle", "data.rationale_tokens=24"]
    cot = {"label": "cot", "overrides": ["method=cot", *rationales]}
    coconut = {
        "label": "coconut_official",
        "overrides": [
            "method=coconut",
            *rationales,
            "coconut.markers=true",
            "coconut.marker_init=<|im_end|>",
            "coconut.curriculum=true",
            "coconut.init_from=${logging.root_dir}/ablation_tiny/cot,seed=0",
            "coconut.max_latent_stage=1",
            "coconut.c_thought=2",
            "coconut.k=2",
            "coconut.steps_per_stage=1",
        ],
    }
    path = write_sweep(tmp_path, seeds=[0], grid=None, points=[cot, coconut], launcher=ON_SLURM)
    code, printed = command(capsys, "sweep", str(path), "--launcher", "slurm")
    assert code == 0, printed
    jobs = {key: entry["job_id"] for key, entry in jobs_of(path).items()}
    assert f"Dependency=afterok:{jobs['cot,seed=0']}" in slurm(
        "scontrol", "show", "job", jobs["coconut_official,seed=0"]
    )
    code, printed = command(capsys, "sweep", "status", str(path), "--wait")
    assert code == 0, printed
    times = {
        line.split("|")[0]: line.split("|")[1:]
        for line in slurm(
            "sacct", "-X", "-n", "-P", "-o", "JobID,Start,End", "-j", ",".join(jobs.values())
        ).splitlines()
    }
    assert times[jobs["coconut_official,seed=0"]][0] >= times[jobs["cot,seed=0"]][1]  # started after cot ended


def test_status_shows_a_failed_runs_error_and_resubmitting_duplicates_nothing(cluster, write_sweep, tmp_path, capsys):
    broken = {"label": "broken", "overrides": ["method=coconut", f"coconut.init_from={tmp_path / 'no_cot_run'}"]}
    path = write_sweep(tmp_path, seeds=[0], grid={"fusion.lam": [0.5]}, points=[broken], launcher=ON_SLURM)
    assert command(capsys, "sweep", str(path), "--launcher", "slurm")[0] == 0
    # base job ids (%F: an array's tasks share one): stable while tasks start, and other tests' jobs may end
    submitted, queued = jobs_of(path), set(slurm("squeue", "-h", "-o", "%F").split())
    code, printed = command(capsys, "sweep", str(path), "--launcher", "slurm")  # while they are queued or running
    assert code == 0 and "submitted 0 job(s)" in printed and "left alone: fusion.lam=0.5,seed=0" in printed
    assert jobs_of(path) == submitted and set(slurm("squeue", "-h", "-o", "%F").split()) <= queued  # no new job

    code, printed = command(capsys, "sweep", "status", str(path), "--wait")
    assert code == 2 and re.search(r"^tiny: 1 done, 1 failed \(\d+ s\)$", printed, re.M), printed
    broken_job = submitted["broken,seed=0"]["job_id"]
    error = printed.split(f"broken,seed=0 failed (job {broken_job}):")[1]
    assert "ConfigError: coconut.init_from=" in error and "no checkpoint there" in error
    assert "1 of 2 runs did not finish (broken,seed=0)" in printed

    code, printed = command(capsys, "sweep", str(path), "--launcher", "slurm")  # only the failed run again
    assert code == 0 and "submitted 1 job(s)" in printed
    again = jobs_of(path)
    assert again["fusion.lam=0.5,seed=0"] == submitted["fusion.lam=0.5,seed=0"]
    assert again["broken,seed=0"]["earlier"] == [broken_job] and again["broken,seed=0"]["job_id"] != broken_job
    assert command(capsys, "sweep", "status", str(path), "--wait")[0] == 2  # it fails again: nothing left running


def test_train_sbatch_runs_on_the_cluster(cluster, run_config, tmp_path):
    """The template as users submit it (one task per device: 2 CPU tasks here, no GPU)."""
    cfg = run_config()
    done = subprocess.run(
        [
            "sbatch",
            "--wait",
            "--ntasks-per-node=2",
            "--gpus-per-node=0",
            "--cpus-per-task=1",
            "--time=30",
            f"--output={tmp_path / 'train-%j.out'}",
            "experiments/slurm/train.sbatch",
            str(DEBUG_CONFIG),
            "trainer.accelerator=cpu",
            f"data.synthetic_dir={cfg.data.synthetic_dir}",
            f"logging.cache_dir={cfg.logging.cache_dir}",
            f"logging.root_dir={tmp_path / 'logs'}",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "data.batch_size=2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    [log] = tmp_path.glob("train-*.out")
    assert done.returncode == 0, log.read_text()[-3000:]
    assert "(restart 0): 1 node(s) x 2 task(s)" in log.read_text() and SRUN_HINT not in log.read_text()
    metrics = json.loads((tmp_path / "logs" / "tiny" / "version_0" / "metrics.json").read_text())
    assert metrics["global_step"] == 4
