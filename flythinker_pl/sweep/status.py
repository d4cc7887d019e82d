"""Where each run of a sweep stands (`flythinker sweep status X.yaml`): its state from the run dirs
and the manifest's jobs (SLURM's own record of them), its progress from the run's TensorBoard
scalars, its log, and for a failed run the end of its error. The launchers decide what to
(re)submit from the same states."""

from __future__ import annotations

import json
import pickle
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from ..console import on_terminal
from ..lit.rundirs import run_dirs
from .jobs import Manifest, job_paths
from .runs import completed_run
from .spec import Run, Sweep, SweepError

STATES = ("done", "running", "pending", "failed", "cancelled", "new")  # new: never submitted, not finished
RESUBMIT = ("new", "failed", "cancelled")  # what a launch (re)submits; a half-trained run resumes
# SLURM job states (squeue/sacct) that are not over yet, and the ended ones that mean "cancelled";
# every other ended state (FAILED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, ...) is a failure.
SLURM_LIVE = {
    "PENDING": "pending",
    "REQUEUED": "pending",
    "REQUEUE_HOLD": "pending",
    "REQUEUE_FED": "pending",
    "CONFIGURING": "pending",
    "RESV_DEL_HOLD": "pending",
    "SUSPENDED": "pending",
    "RUNNING": "running",
    "COMPLETING": "running",
    "SIGNALING": "running",
    "STAGE_OUT": "running",
    "RESIZING": "running",
    "STOPPED": "running",
}
SLURM_CANCELLED = ("CANCELLED", "PREEMPTED", "REVOKED", "UNKNOWN")  # UNKNOWN: SLURM no longer knows the job
ERROR_LINES = 6
POLL_SECONDS = 10.0


@dataclass
class RunStatus:
    run: Run
    state: str
    job_id: str = ""
    detail: str = ""  # the scheduler's own state where it says more (TIMEOUT, OUT_OF_MEMORY, ...)
    run_dir: Optional[Path] = None
    step: Optional[int] = None
    val_loss: Optional[float] = None
    log: Optional[Path] = None
    error: str = ""  # the last lines of a failed run's error


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM's state of each job: sacct's (accounting keeps ended jobs), then squeue's for the jobs the
    controller still holds, which is the current one (sacct lags a little, and a cluster without
    accounting has only squeue). A job neither knows is UNKNOWN."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    states = dict.fromkeys(job_ids, "UNKNOWN")
    accounting = subprocess.run(
        ["sacct", "-X", "--parsable2", "-o", "JobID,State", "-j", ",".join(job_ids)], capture_output=True, text=True
    )
    if accounting.returncode == 0:
        for job_id, info in SlurmInfoWatcher().read_info(accounting.stdout).items():
            if job_id in states:
                states[job_id] = info["State"].split()[0]  # "CANCELLED by 0"
    queue = subprocess.run(["squeue", "--me", "-h", "-r", "-t", "all", "-o", "%i|%T"], capture_output=True, text=True)
    if queue.returncode != 0:
        raise SweepError(f"squeue failed, so the jobs' states are unknown: {queue.stderr.strip()}")
    for line in queue.stdout.splitlines():
        job_id, _, state = line.partition("|")
        if job_id in states:
            states[job_id] = state
    return states


def _local_state(entry: dict) -> str:
    """A job of the local launcher: its result if it wrote one, else whether its process still runs."""
    result = job_paths(entry).result_pickle
    if result.exists():
        return "COMPLETED" if _result(result)[0] == "success" else "FAILED"
    try:
        alive = "submitit" in Path(f"/proc/{int(entry['job_id'])}/cmdline").read_text()
    except (OSError, ValueError):
        alive = False
    return "RUNNING" if alive else "CANCELLED"


def _result(path: Path) -> tuple[str, object]:
    with open(path, "rb") as file:
        return pickle.load(file)


def _error(entry: dict) -> str:
    """The end of a failed job's error: the traceback its result holds, else its error log."""
    paths = job_paths(entry)
    text = ""
    if paths.result_pickle.exists():
        outcome, text = _result(paths.result_pickle)
        text = str(text) if outcome == "error" else ""
    if not text and paths.stderr.exists():
        text = paths.stderr.read_text(errors="replace")
    return "\n".join([line for line in text.splitlines() if line.strip()][-ERROR_LINES:])


def _progress(run_dir: Path) -> tuple[Optional[int], Optional[float]]:
    """(latest step, latest val/loss) of a run in progress, from its TensorBoard scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 1, "tensors": 1}).Reload()
    scalars = {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}
    step = max((series[-1].step for series in scalars.values() if series), default=None)
    return step, scalars["val/loss"][-1].value if scalars.get("val/loss") else None


def _status(run: Run, entry: Optional[dict], slurm: dict[str, str]) -> RunStatus:
    finished = completed_run(run.config)
    job_id = entry["job_id"] if entry else ""
    log = job_paths(entry).stdout if entry else None
    if finished is not None:
        metrics = json.loads((finished / "metrics.json").read_text())
        return RunStatus(run, "done", job_id, "", finished, metrics.get("global_step"), metrics.get("val/loss"), log)
    scheduler = "" if entry is None else slurm[job_id] if entry["launcher"] == "slurm" else _local_state(entry)
    if entry is None:
        state = "new"
    elif scheduler in SLURM_LIVE:
        state = SLURM_LIVE[scheduler]
    else:
        state = "cancelled" if scheduler in SLURM_CANCELLED else "failed"
    existing = run_dirs(run.config)
    run_dir = existing[-1] if existing else None
    step, val_loss = _progress(run_dir) if run_dir is not None else (None, None)
    detail = scheduler if scheduler not in ("", "PENDING", "RUNNING", "FAILED", "CANCELLED") else ""
    if scheduler == "COMPLETED":
        detail = "the job ended, the run did not finish"
    return RunStatus(
        run, state, job_id, detail, run_dir, step, val_loss, log, _error(entry) if state == "failed" else ""
    )


def statuses(sweep: Sweep, manifest: Manifest) -> list[RunStatus]:
    """Every run's status, in the sweep's order (one squeue and one sacct call for all SLURM jobs)."""
    entries = {run.key: manifest.entry(run.key) for run in sweep.runs}
    slurm_jobs = [entry["job_id"] for entry in entries.values() if entry and entry["launcher"] == "slurm"]
    slurm = slurm_states(slurm_jobs) if slurm_jobs else {}
    return [_status(run, entries[run.key], slurm) for run in sweep.runs]


def status_table(found: list[RunStatus]) -> str:
    """One line per run, then the end of each failed run's error."""

    def shown(value):
        return "" if value is None else value

    table = pd.DataFrame(
        [
            {
                "point": s.run.point.label,
                "seed": s.run.seed,
                "state": s.state + (f" ({s.detail})" if s.detail else ""),
                "job": s.job_id,
                "step": shown(s.step),
                "val/loss": "" if s.val_loss is None else f"{s.val_loss:.4f}",
                "run dir": shown(s.run_dir),
                "log": shown(s.log),
            }
            for s in found
        ]
    )
    lines = [table.to_string(index=False)]
    for s in found:
        if s.error:
            lines += [f"\n{s.run.key} failed (job {s.job_id}):", *(f"    {line}" for line in s.error.splitlines())]
    return "\n".join(lines)


def counts_line(name: str, found: list[RunStatus], started: float) -> str:
    counts = Counter(s.state for s in found)
    return (
        f"{name}: "
        + ", ".join(f"{counts[state]} {state}" for state in STATES if counts[state])
        + f" ({time.perf_counter() - started:.0f} s)"
    )


def wait(sweep: Sweep, manifest: Manifest, poll: Optional[float] = None) -> list[RunStatus]:
    """Poll until no run is pending or running, showing one progress line (rewritten in place on a
    terminal, a new line when it changes elsewhere); the final statuses."""
    started, shown = time.perf_counter(), ""
    while True:
        found = statuses(sweep, manifest)
        line = counts_line(sweep.name, found, started)
        if on_terminal():
            print(f"\r{line}", end="", flush=True)
        elif line.rsplit(" (", 1)[0] != shown:
            print(line, flush=True)
            shown = line.rsplit(" (", 1)[0]
        if not any(s.state in ("pending", "running") for s in found):
            if on_terminal():
                print()
            return found
        time.sleep(POLL_SECONDS if poll is None else poll)
