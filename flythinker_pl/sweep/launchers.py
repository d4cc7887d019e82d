"""A sweep's runs as jobs (`launcher: local | slurm`; `inline` runs them in this process: runs.py).

  local  each run a job on this machine (submitit's LocalExecutor), `parallel` at once, the GPUs
         (CUDA_VISIBLE_DEVICES per job) and the CPU threads split between them; the command waits
         for them, a run that reads another's outputs after it, then writes the tables
  slurm  each run a SLURM job (submitit's SlurmExecutor): one job array per resource shape, at most
         `parallel` of its tasks at once; a run that reads another's outputs waits for it (afterok).
         The command submits and returns; `flythinker sweep status X.yaml --wait` watches.

Both are idempotent: a rerun skips finished runs, leaves pending and running jobs alone and
(re)submits the rest, which resume from their checkpoints. The manifest (jobs.py) records the jobs;
status.py tells each run's state.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Optional

from ..config import Config
from .jobs import Manifest, PointJob
from ..lit.launch import processes
from .runs import aggregate, completed_run
from .spec import LauncherSettings, Run, SlurmSettings, Sweep, SweepError
from .status import RESUBMIT, status_table, statuses

SLURM_COMMANDS = ("sbatch", "srun", "squeue", "sacct")
LOCAL_TIMEOUT_MIN = 60 * 24 * 30  # LocalExecutor signals a job at its time limit: none that matters here


def jobs_folder(out_dir: str | Path) -> Path:
    """Where submitit keeps each job's pickles and logs: <results>/jobs/<job id>/."""
    return Path(out_dir).resolve() / "jobs" / "%j"


def sbatch_parameters(
    slurm: SlurmSettings, cfg: Config, job_name: str, parallel: Optional[int] = None, after: tuple[str, ...] = ()
) -> dict:
    """submitit SlurmExecutor parameters for a run of `cfg`: `launcher.slurm`'s resources, one task
    per process of the run (trainer.devices per node, trainer.num_nodes nodes) under srun, requeue
    allowed, and with `after` (job ids) an afterok dependency that SLURM cancels if it fails."""
    tasks = processes(cfg) // cfg.trainer.num_nodes
    gpus = (
        slurm.gpus_per_node
        if slurm.gpus_per_node is not None
        else tasks
        if str(cfg.trainer.accelerator) in ("gpu", "cuda")
        else None
    )
    parameters = {
        "job_name": job_name,
        "partition": slurm.partition,
        "account": slurm.account,
        "qos": slurm.qos,
        "time": slurm.time,
        "nodes": cfg.trainer.num_nodes,
        "ntasks_per_node": tasks,
        "gpus_per_node": gpus or None,
        "cpus_per_task": slurm.cpus_per_task,
        "mem": slurm.mem,
        "constraint": slurm.constraint,
        "setup": list(slurm.setup) or None,
        "signal_delay_s": slurm.signal_delay_s,
        "array_parallelism": parallel,
        "dependency": f"afterok:{':'.join(after)}" if after else None,
        "additional_parameters": {"requeue": True, **({"kill-on-invalid-dep": "yes"} if after else {}), **slurm.sbatch},
    }
    return {name: value for name, value in parameters.items() if value is not None}


def _submit(folder: Path, slurm: SlurmSettings, parameters: dict, runs: list[Run]) -> list[str]:
    """One sbatch: a job array of `runs` (a plain job for one); their job ids."""
    import submitit

    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=slurm.max_requeues)
    executor.update_parameters(**parameters)
    try:
        jobs = executor.submit_array([PointJob(run.key, run.config, os.getcwd()) for run in runs])
    except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError) as err:
        raise SweepError(
            f"sbatch refused the jobs of {', '.join(run.key for run in runs)}: {str(err).strip().splitlines()[-1]}"
        ) from None
    return [job.job_id for job in jobs]


def submit_slurm(sweep: Sweep, settings: LauncherSettings, out_dir: str | Path, overrides: list[str] = ()) -> None:
    """Submit every run that is not done, pending or running as a SLURM job (the rest are left
    alone), recording each job in the manifest as soon as sbatch accepted it."""
    missing = [command for command in SLURM_COMMANDS if shutil.which(command) is None]
    if missing:
        raise SweepError(
            f"{sweep.path}: launcher slurm: {', '.join(missing)} not found on PATH (SLURM's commands: "
            "run on a login node of the cluster, or use --launcher local)"
        )
    manifest, folder = Manifest(out_dir), jobs_folder(out_dir)
    with manifest.lock():
        manifest.data["overrides"] = list(overrides)
        found = {s.run.key: s for s in statuses(sweep, manifest)}
        job_of = {key: s.job_id for key, s in found.items() if s.state in ("pending", "running")}
        todo = [run for run in sweep.runs if found[run.key].state in RESUBMIT]
        waiting = [run for run in todo if any(found[key].state != "done" for key in run.after)]
        arrays: dict[str, tuple[dict, list[Run]]] = {}
        for run in todo:
            if run not in waiting:
                parameters = sbatch_parameters(settings.slurm, run.config, sweep.name, settings.parallel)
                arrays.setdefault(json.dumps(parameters, sort_keys=True), (parameters, []))[1].append(run)

        def submit(parameters: dict, runs: list[Run]) -> None:
            for run, job_id in zip(runs, _submit(folder, settings.slurm, parameters, runs)):
                job_of[run.key] = job_id
                manifest.record(run.key, "slurm", job_id, folder)

        for parameters, runs in arrays.values():
            submit(parameters, runs)
        for run in waiting:  # in the file's order: the runs it waits for have their job ids by now
            after = tuple(job_of[key] for key in run.after if found[key].state != "done")
            submit(sbatch_parameters(settings.slurm, run.config, sweep.name, settings.parallel, after), [run])
        manifest.save()
    left = [
        f"{key} ({found[key].state}, job {found[key].job_id})"
        for key in found
        if found[key].state in ("pending", "running")
    ]
    print(
        f"{sweep.name}: submitted {len(todo)} job(s)"
        + (f": {', '.join(job_of[run.key] for run in todo)}" if todo else "")
        + f"; {sum(s.state == 'done' for s in found.values())} run(s) done"
        + (f"; left alone: {', '.join(left)}" if left else "")
    )


def gpu_shares(sweep: Sweep, parallel: int) -> list[tuple[int, ...]]:
    """The GPUs of each of `parallel` local jobs: this machine's visible GPUs in equal shares, as
    numbers for the jobs' CUDA_VISIBLE_DEVICES (this process's own CUDA_VISIBLE_DEVICES, if set,
    says which); all empty without GPUs."""
    import torch

    count = torch.cuda.device_count()
    if not count:
        return [()] * parallel
    visible = [device.strip() for device in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if device.strip()]
    if visible and not all(device.isdigit() for device in visible):
        raise SweepError(
            f"{sweep.path}: launcher local splits GPUs by number, and CUDA_VISIBLE_DEVICES="
            f"{','.join(visible)} names them otherwise: give their numbers, or unset it"
        )
    gpus = [int(device) for device in visible[:count]] if visible else list(range(count))
    if parallel > count:
        raise SweepError(
            f"{sweep.path}: launcher local: {parallel} runs at once cannot share {count} GPU(s); "
            f"use --parallel {count} or less (or trainer.accelerator=cpu)"
        )
    share = count // parallel
    return [tuple(gpus[slot * share : (slot + 1) * share]) for slot in range(parallel)]


def run_local(sweep: Sweep, settings: LauncherSettings, out_dir: str | Path, overrides: list[str] = ()):
    """Run the sweep as jobs on this machine, `settings.parallel` at once, then `aggregate`. A run
    starts once the runs it reads are done; one whose dependency failed is not started."""
    import submitit

    parallel = settings.parallel or 1
    on_gpu = any(str(run.config.trainer.accelerator) != "cpu" for run in sweep.runs)
    free = gpu_shares(sweep, parallel) if on_gpu else [()] * parallel  # each job's GPUs
    threads = max(1, (os.cpu_count() or 1) // parallel)
    manifest, folder = Manifest(out_dir), jobs_folder(out_dir)
    executor = submitit.LocalExecutor(folder=folder)
    with manifest.lock():
        manifest.data["overrides"] = list(overrides)
        found = {s.run.key: s for s in statuses(sweep, manifest)}
        done = {key for key, s in found.items() if s.state == "done"}
        queue = [run for run in sweep.runs if found[run.key].state in RESUBMIT]
        running, failed = {}, []
        try:
            while queue or running:
                for run in [run for run in queue if all(key in done for key in run.after)][: len(free)]:
                    job_gpus = free.pop(0)
                    executor.update_parameters(
                        timeout_min=LOCAL_TIMEOUT_MIN, gpus_per_node=len(job_gpus), visible_gpus=job_gpus
                    )
                    job = executor.submit(PointJob(run.key, run.config, os.getcwd(), threads))
                    manifest.record(run.key, "local", job.job_id, folder)
                    running[run.key] = run, job, job_gpus
                    queue.remove(run)
                    print(
                        f"{run.key}: started, job {job.job_id} on {f'GPUs {list(job_gpus)}, ' if job_gpus else ''}"
                        f"{threads} CPU thread(s); log {job.paths.stdout}",
                        flush=True,
                    )
                # runs whose dependency failed, or all that are left when nothing runs: they would wait in vain
                for run in list(queue) if not running else [run for run in queue if set(run.after) & set(failed)]:
                    queue.remove(run)
                    failed.append(run.key)
                    print(f"{run.key}: not started, it reads {', '.join(run.after)}, which did not finish", flush=True)
                for key, (run, job, job_gpus) in list(running.items()):
                    if job.done():
                        del running[key]
                        free.append(job_gpus)
                        finished = completed_run(run.config) is not None
                        (done.add if finished else failed.append)(key)
                        print(f"{key}: {'done' if finished else 'failed'}", flush=True)
                time.sleep(0.5)
        except BaseException:
            for _, job, _ in running.values():
                job.cancel()  # the job stops (SIGINT); rerunning the command resumes it
            raise
    if failed:
        print(status_table(statuses(sweep, manifest)))
    results = aggregate(sweep, out_dir) if done else None
    if failed:
        raise SweepError(
            f"{sweep.path}: {len(failed)} of {len(sweep.runs)} runs did not finish "
            f"({', '.join(failed)}); rerun the same command to retry them (they resume)"
        )
    return results
