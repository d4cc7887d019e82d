"""Sweeps as jobs, without a cluster: the launcher block checked before anything is submitted, the
sbatch file of a run, which runs a submission (re)submits and how they chain, job states, run dirs
claimed atomically, and no `srun` hint outside a SLURM job. The real cluster: tests/test_slurm.py."""

from __future__ import annotations

import itertools
import os
import pickle
import shutil
import threading
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from submitit.slurm.slurm import _make_sbatch_string

from flythinker_pl.cli import main
from flythinker_pl.lit.launch import SRUN_HINT, cluster_environment, external_launch
from flythinker_pl.lit.run import build_trainer, fit
from flythinker_pl.lit.rundirs import new_version
from flythinker_pl.sweep import launchers, status
from flythinker_pl.sweep.jobs import Manifest, job_paths
from flythinker_pl.sweep.launchers import gpu_shares, sbatch_parameters, submit_slurm
from flythinker_pl.sweep.spec import SlurmSettings, SweepError, load_sweep
from flythinker_pl.sweep.status import statuses

from helpers import FAST, ROOT, fake_run

SLURM_COMMANDS = ("sbatch", "srun", "squeue", "sacct", "scontrol")


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """SLURM's commands on PATH as stubs that only record that they were called."""
    bin_dir, calls = tmp_path / "fake-slurm", tmp_path / "slurm-calls"
    bin_dir.mkdir()
    for command in SLURM_COMMANDS:
        stub = bin_dir / command
        stub.write_text(f'#!/bin/bash\necho "{command} $*" >> {calls}\n')
        stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return calls


@pytest.mark.parametrize(
    "launcher,message",
    [
        (
            {"slurm": {"partiton": "gpu"}},
            "launcher.slurm: unknown key 'partiton'; valid keys: partition, account, qos, "
            "time, cpus_per_task, mem, gpus_per_node, constraint, setup, sbatch, "
            "signal_delay_s, max_requeues",
        ),
        ({"nmae": "slurm"}, "launcher: unknown key 'nmae'; valid keys: name, parallel, slurm"),
        ({"name": "cluster"}, "launcher: name='cluster' is not one of inline, local, slurm"),
        ({"parallel": 0}, "launcher: parallel=0 must be >= 1"),
        ({"slurm": {"time": "soon"}}, "launcher: Value 'soon' of type 'str' could not be converted to Integer"),
        ({"slurm": ["partition=gpu"]}, "launcher.slurm must be a mapping with keys partition, account"),
    ],
)
def test_a_bad_launcher_block_is_one_line_before_anything_is_submitted(
    write_sweep, fake_slurm, tmp_path, capsys, launcher, message
):
    path = write_sweep(tmp_path, launcher=launcher)
    assert main(["sweep", str(path), "--launcher", "slurm"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"error: {path}: ") and message in error, error
    assert not fake_slurm.exists() and not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


def test_slurm_without_sbatch_on_path_is_one_line_before_anything_is_submitted(
    write_sweep, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    path = write_sweep(tmp_path)
    assert main(["sweep", str(path), "--launcher", "slurm"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "launcher slurm: sbatch, srun, squeue, sacct not found on PATH" in error
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


def test_the_sbatch_file_of_a_multi_gpu_run_with_a_dependency(run_config, tmp_path):
    cfg = run_config("trainer.accelerator=gpu", "trainer.devices=4", "trainer.num_nodes=2", "trainer.strategy=ddp")
    slurm = SlurmSettings(
        partition="gpu",
        account="proj",
        qos="high",
        time=600,
        cpus_per_task=8,
        mem="64G",
        constraint="a100",
        setup=["module load cuda/12.1"],
        sbatch={"exclude": "n3"},
    )
    parameters = sbatch_parameters(slurm, cfg, "lambda", parallel=2, after=("12_0", "13"))
    text = _make_sbatch_string(
        command="python -m submitit.core._submit jobs", folder=tmp_path, map_count=3, **parameters
    )
    flags = {line.removeprefix("#SBATCH --") for line in text.splitlines() if line.startswith("#SBATCH")}
    assert {
        "job-name=lambda",
        "partition=gpu",
        "account=proj",
        "qos=high",
        "time=600",
        "nodes=2",
        "ntasks-per-node=4",
        "gpus-per-node=4",
        "cpus-per-task=8",
        "mem=64G",
        "constraint=a100",
        "exclude=n3",
        "requeue",
        "dependency=afterok:12_0:13",
        "kill-on-invalid-dep=yes",
        "signal=USR2@120",
        "array=0-2%2",
    } <= flags
    setup, command = text.index("module load cuda/12.1"), text.index("srun --unbuffered")
    assert setup < command and "python -m submitit.core._submit jobs" in text[command:]  # every task under srun

    cpu = sbatch_parameters(SlurmSettings(), run_config("trainer.accelerator=cpu", "trainer.devices=2"), "tiny")
    assert cpu["ntasks_per_node"] == 2 and cpu["nodes"] == 1
    assert not {"gpus_per_node", "dependency", "partition", "array_parallelism"} & set(cpu)
    assert cpu["additional_parameters"] == {"requeue": True}


def test_a_run_waits_for_the_run_whose_outputs_it_reads_which_must_come_first(write_sweep, tmp_path):
    sweep = load_sweep(ROOT / "ablations" / "baselines.yaml")
    assert {run.key: run.after for run in sweep.runs if run.after} == {"coconut_official,seed=0": ("cot,seed=0",)}
    reader = {
        "label": "coconut",
        "overrides": ["method=coconut", "coconut.init_from=${logging.root_dir}/ablation_tiny/cot,seed=0"],
    }
    writer = {"label": "cot", "overrides": ["method=cot", "data.rationales=oracle"]}
    with pytest.raises(
        SweepError,
        match=r"point 'coconut' reads run 'cot,seed=0' \(coconut.init_from\), which comes "
        r"after it: list point 'cot' first",
    ):
        load_sweep(write_sweep(tmp_path, seeds=[0], points=[reader, writer]))


def error_result(entry: dict, message: str) -> None:
    """What submitit leaves when the job's callable raised."""
    paths = job_paths(entry)
    paths.result_pickle.parent.mkdir(parents=True, exist_ok=True)
    with open(paths.result_pickle, "wb") as file:
        pickle.dump(("error", f'Traceback (most recent call last):\n  File "x.py", line 1\n{message}\n'), file)


def test_a_submission_leaves_live_jobs_alone_resubmits_ended_ones_and_chains_dependencies(
    write_sweep, fake_slurm, tmp_path, monkeypatch, capsys
):
    cot = {"label": "cot", "overrides": ["method=cot", "data.rationales=oracle"]}
    coconut = {
        "label": "coconut",
        "overrides": ["method=coconut", "coconut.init_from=${logging.root_dir}/ablation_tiny/cot,seed=0"],
    }
    two_tasks = {"label": "ddp", "overrides": ["trainer.devices=2", "trainer.strategy=ddp"]}
    sweep = load_sweep(write_sweep(tmp_path, seeds=[0], points=[cot, coconut, two_tasks]))
    submitted, scheduler, sbatch_ids = [], {}, itertools.count(10)

    def fake_submit(folder, slurm, parameters, runs):
        first = next(sbatch_ids)
        submitted.append((parameters.get("dependency"), parameters["ntasks_per_node"], [run.key for run in runs]))
        return [f"{first}_{index}" for index in range(len(runs))] if len(runs) > 1 else [str(first)]

    monkeypatch.setattr(launchers, "_submit", fake_submit)
    monkeypatch.setattr(status, "slurm_states", lambda ids: {job: scheduler.get(job, "UNKNOWN") for job in ids})
    out = tmp_path / "results" / "tiny"
    submit_slurm(sweep, sweep.launcher, out)
    # one array for the runs of one shape, one job for the 2-task run, the reader after its writer
    assert submitted == [
        (None, 1, ["fusion.lam=0.5,seed=0", "fusion.lam=2.0,seed=0", "cot,seed=0"]),
        (None, 2, ["ddp,seed=0"]),
        ("afterok:10_2", 1, ["coconut,seed=0"]),
    ]
    manifest = Manifest(out)
    assert [manifest.entry(run.key)["job_id"] for run in sweep.runs] == ["10_0", "10_1", "10_2", "12", "11"]

    submitted.clear()
    scheduler.update({"10_0": "RUNNING", "10_1": "PENDING", "10_2": "COMPLETED", "11": "CANCELLED", "12": "FAILED"})
    fake_run(sweep.runs[2].config, {"val/loss": 3.0, "global_step": 2}, [1, 1, 1, 1])  # cot finished
    error_result(manifest.entry("coconut,seed=0"), "ValueError: no cot checkpoint")
    found = {s.run.key: s for s in statuses(sweep, Manifest(out))}
    assert {key: s.state for key, s in found.items()} == {
        "fusion.lam=0.5,seed=0": "running",
        "fusion.lam=2.0,seed=0": "pending",
        "cot,seed=0": "done",
        "ddp,seed=0": "cancelled",
        "coconut,seed=0": "failed",
    }
    assert found["coconut,seed=0"].error.endswith("ValueError: no cot checkpoint")
    assert found["cot,seed=0"].step == 2 and found["cot,seed=0"].val_loss == 3.0
    submit_slurm(sweep, sweep.launcher, out)  # the live ones alone; the reader's writer is done: no dependency
    assert submitted == [(None, 1, ["coconut,seed=0"]), (None, 2, ["ddp,seed=0"])]
    manifest = Manifest(out)
    assert manifest.entry("coconut,seed=0") | {"submitted": ""} == {
        "launcher": "slurm",
        "job_id": "13",
        "folder": str(out.resolve() / "jobs" / "%j"),
        "submitted": "",
        "earlier": ["12"],
    }
    assert manifest.entry("fusion.lam=0.5,seed=0")["job_id"] == "10_0"
    assert (
        "left alone: fusion.lam=0.5,seed=0 (running, job 10_0), fusion.lam=2.0,seed=0 (pending, job 10_1)"
        in capsys.readouterr().out
    )

    submitted.clear()
    scheduler.update({"13": "PENDING", "14": "RUNNING"})  # the same command again: every run done or live
    submit_slurm(sweep, sweep.launcher, out)
    assert (
        submitted == []
        and Manifest(out).data == manifest.data
        and "submitted 0 job(s); 1 run(s) done" in capsys.readouterr().out
    )

    scheduler.update({"10_0": "COMPLETED"})  # ended without finishing its run: resubmitted, saying why
    found = {s.run.key: s for s in statuses(sweep, Manifest(out))}
    assert (found["fusion.lam=0.5,seed=0"].state, found["fusion.lam=0.5,seed=0"].detail) == (
        "failed",
        "the job ended, the run did not finish",
    )


def test_local_jobs_split_the_visible_gpus(write_sweep, tmp_path, monkeypatch):
    sweep = load_sweep(write_sweep(tmp_path, seeds=[0]))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert gpu_shares(sweep, 2) == [(), ()]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_shares(sweep, 2) == [(0, 1, 2, 3), (4, 5, 6, 7)] and gpu_shares(sweep, 3) == [(0, 1), (2, 3), (4, 5)]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")  # this process's GPUs: the jobs get those
    assert gpu_shares(sweep, 2) == [(4, 5), (6, 7)]
    with pytest.raises(SweepError, match=r"5 runs at once cannot share 4 GPU\(s\); use --parallel 4 or less"):
        gpu_shares(sweep, 5)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1a2b,GPU-3c4d,GPU-5e6f,GPU-7a8b")
    with pytest.raises(SweepError, match="CUDA_VISIBLE_DEVICES=GPU-1a2b,.* names them otherwise"):
        gpu_shares(sweep, 2)


def test_processes_claiming_a_run_dir_at_once_never_share_one(tmp_path):
    claimed, start = [], threading.Barrier(16)

    def claim():
        start.wait()
        claimed.append(new_version(tmp_path / "experiment").name)

    workers = [threading.Thread(target=claim) for _ in range(16)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(claimed, key=lambda name: int(name.split("_")[1])) == [f"version_{n}" for n in range(16)]


@pytest.fixture
def srun_installed(tmp_path, monkeypatch):
    """A machine with SLURM installed (every login node): `srun` on PATH, and no job around this process."""
    bin_dir = tmp_path / "slurm-bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/bash\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    for name in [name for name in os.environ if name.startswith(("SLURM_", "SUBMITIT_"))]:
        monkeypatch.delenv(name)
    return monkeypatch


def hints(make) -> tuple[object, list[str]]:
    """(what `make()` made, the srun hints it warned)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        made = make()
    return made, [str(w.message) for w in caught if SRUN_HINT in str(w.message)]


def test_outside_a_slurm_job_no_run_is_told_to_use_srun(srun_installed, run_config, one_thread):
    _, lightnings_own = hints(lambda: L.Trainer(accelerator="cpu", logger=False))
    assert lightnings_own  # what every run printed (twice) on a machine with SLURM installed
    run_dir, ours = hints(lambda: fit(run_config(*FAST)))  # its Trainer, validation before training, fit
    assert ours == [] and (run_dir / "metrics.json").exists()
    assert hints(external_launch) == (None, [])


def test_inside_a_slurm_job_step_lightning_takes_its_tasks_and_a_sweep_job_leaves_requeue_to_submitit(
    srun_installed, run_config, tmp_path
):
    for name, value in {
        "SLURM_JOB_ID": "7",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_JOB_NAME": "tiny",
    }.items():
        srun_installed.setenv(name, value)
    trainer, told = hints(lambda: build_trainer(run_config(), tmp_path / "run" / "version_0"))
    environment = trainer._accelerator_connector.cluster_environment
    assert told == [] and isinstance(environment, SLURMEnvironment) and environment.auto_requeue  # train.sbatch's
    srun_installed.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert cluster_environment().auto_requeue is False  # a sweep's job: submitit requeues it, Lightning does not
    srun_installed.delenv("SLURM_NTASKS")  # a batch script that forgot srun: the hint applies there
    assert hints(lambda: L.Trainer(accelerator="cpu", logger=False))[1]


def test_results_are_renamed_into_place(write_sweep, tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, seeds=[0]))
    for run in sweep.runs:
        fake_run(run.config, {"val/loss": 2.0, "test/bleu": 1.0}, [1.0, 0.5, 1.0, 0.5])
    results = Path(sweep.results_dir)
    results.mkdir(parents=True)
    (results / "table.csv").write_text("an older table")
    launchers.aggregate(sweep)
    assert "fusion.lam=0.5" in (results / "table.csv").read_text()
    assert not [p for p in results.iterdir() if p.name.startswith(".")]  # nothing half-written left beside them


def test_sweep_status_prints_a_line_per_run_with_the_submitted_overrides_and_waits_for_the_tables(
    write_sweep, tmp_path, monkeypatch, capsys
):
    from torch.utils.tensorboard import SummaryWriter

    path = write_sweep(tmp_path, seeds=[0], points=[{"label": "sft", "overrides": ["method=sft"]}])
    submitted = ["trainer.max_steps=3"]  # what the jobs were submitted with: `status` finds their runs without it
    sweep = load_sweep(path, submitted)
    out = tmp_path / "results" / "tiny"
    manifest = Manifest(out)
    manifest.data["overrides"] = submitted
    for run, (launcher, job_id) in zip(sweep.runs, [("slurm", "10_0"), ("slurm", "10_1"), ("local", "4242")]):
        manifest.record(run.key, launcher, job_id, launchers.jobs_folder(out))
    monkeypatch.setattr(status, "slurm_states", lambda ids: {"10_0": "COMPLETED", "10_1": "RUNNING"})
    done = fake_run(sweep.runs[0].config, {"val/loss": 2.5, "global_step": 3}, [1, 1, 1, 1])
    running = new_version(Path(sweep.runs[1].config.logging.root_dir) / sweep.runs[1].config.logging.experiment)
    with SummaryWriter(str(running)) as writer:  # a run in progress: validated at step 2, trained to step 3
        writer.add_scalar("val/loss", 1.25, 2)
        writer.add_scalar("train/loss", 1.5, 3)
    error_result(manifest.entry("sft,seed=0"), "RuntimeError: the local job broke")  # a local job's error

    assert main(["sweep", "status", str(path)]) == 0
    printed = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in printed.splitlines()[1:4]}
    log = str(out.resolve() / "jobs" / "%j" / "%j_0_log.out")
    assert lines["fusion.lam=0.5"] == [
        "fusion.lam=0.5",
        "0",
        "done",
        "10_0",
        "3",
        "2.5000",
        str(done),
        log.replace("%j", "10_0"),
    ]
    assert lines["fusion.lam=2.0"] == [
        "fusion.lam=2.0",
        "0",
        "running",
        "10_1",
        "3",
        "1.2500",
        str(running),
        log.replace("%j", "10_1"),
    ]
    assert lines["sft"][:4] == ["sft", "0", "failed", "4242"]  # no result, no process: its error shows why
    assert printed.splitlines()[4:] == [
        "",
        "sft,seed=0 failed (job 4242):",
        "    Traceback (most recent call last):",
        '      File "x.py", line 1',
        "    RuntimeError: the local job broke",
    ]

    monkeypatch.setattr(status, "slurm_states", lambda ids: dict.fromkeys(ids, "COMPLETED"))
    assert main(["sweep", "status", str(path), "--wait"]) == 2  # nothing runs any more, two did not finish
    assert (
        "2 of 3 runs did not finish (fusion.lam=2.0,seed=0, sft,seed=0); submit the sweep again"
        in capsys.readouterr().err
    )
    shutil.rmtree(running)
    for run in sweep.runs[1:]:  # both finished after all (rerun by hand, say)
        fake_run(run.config, {"val/loss": 2.0, "global_step": 3}, [1, 1, 1, 1])
    assert main(["sweep", "status", str(path), "--wait"]) == 0
    printed = capsys.readouterr().out
    assert "tiny: 3 done" in printed and f"Results: {out}/" in printed and (out / "table.csv").exists()

    assert main(["sweep", "status"]) == 2
    assert "usage: flythinker sweep status SWEEP.yaml" in capsys.readouterr().err
