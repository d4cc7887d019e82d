"""Running a sweep in this process (every point x seed in order) and gathering its finished runs
into the tables and plots of evaluation/sweep_report.py."""

from __future__ import annotations

import gc
import json
import os
import shutil
from pathlib import Path
from typing import Optional

import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_only

from ..config import Config
from ..evaluation.sweep_report import write_results
from ..lit.launch import external_launch, processes
from ..lit.run import run_experiment
from ..lit.rundirs import completed_run, decoded_and_scored, finished_run, unfinished_run
from .spec import Sweep, SweepError


def status(cfg: Config) -> str:
    """What running this config would do: reuse a finished run, resume one, or start fresh."""
    run_dir = finished_run(cfg)
    if run_dir is not None:
        return "done" if decoded_and_scored(run_dir, cfg) else "trained (decode + score left)"
    unfinished = unfinished_run(cfg)
    resume_from = unfinished[1] if unfinished else None if cfg.train.resume in ("auto", "never") else cfg.train.resume
    return f"resumes from {resume_from}" if resume_from else "new"


def plan(sweep: Sweep) -> pd.DataFrame:
    """One row per run: point, seed, experiment, what running it would do."""
    return pd.DataFrame(
        [
            {
                "point": run.point.label,
                "seed": run.seed,
                "experiment": run.config.logging.experiment,
                "status": status(run.config),
            }
            for run in sweep.runs
        ],
        index=pd.RangeIndex(1, len(sweep.runs) + 1, name="#"),
    )


def run_sweep(sweep: Sweep, out_dir: Optional[str | Path] = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every point x seed in order (finished runs are reused), then `aggregate` into `out_dir`.
    Multi-process points need an external launcher (torchrun, srun): every rank runs the sweep,
    global rank 0 chooses each run dir for all and writes the results."""
    several = next((run for run in sweep.runs if processes(run.config) > 1), None)
    if several is not None and external_launch() is None:
        raise SweepError(
            f"{sweep.path}: point '{several.point.label}' runs on {processes(several.config)} processes, and a "
            "sweep runs many Trainers in one command: Lightning's own launcher would restart the command in "
            "each rank and could not keep their run dirs in step. Launch the sweep with torchrun or srun, e.g. "
            f"COMMAND=sweep experiments/slurm/torchrun.sh {sweep.path}"
        )
    for number, run in enumerate(sweep.runs, 1):
        print(f"[{number}/{len(sweep.runs)}] {run.point.label} seed={run.seed}: {status(run.config)}", flush=True)
        run_experiment(run.config)
        gc.collect()  # the finished point's models are garbage now: free their (GPU) memory before the next
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if rank_zero_only.rank != 0:  # every rank ran the sweep; rank 0 alone writes the results
        return pd.DataFrame(), pd.DataFrame()
    return aggregate(sweep, out_dir)


def runs_frame(sweep: Sweep) -> pd.DataFrame:
    """One row per finished run: point, seed, grid settings, run dir and every metrics.json key.
    Runs not finished yet are left out (`plan` lists them)."""
    rows = []
    for run in sweep.runs:
        run_dir = completed_run(run.config)
        if run_dir is not None:
            metrics = json.loads((run_dir / "metrics.json").read_text())
            rows.append(
                {"point": run.point.label, "seed": run.seed, **run.point.settings, "run_dir": str(run_dir), **metrics}
            )
    if not rows:
        raise FileNotFoundError(f"{sweep.path}: no finished runs yet (run `flythinker sweep {sweep.path}`)")
    return pd.DataFrame(rows)


def aggregate(sweep: Sweep, out_dir: Optional[str | Path] = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary table, segment table) of the finished runs, written with the plots into `out_dir`
    (default: the sweep's results dir). Only reads run dirs, so it can always be rebuilt. Each file
    is written beside its place and renamed into it: a reader (or a second `status --wait`) never
    sees half a table."""
    runs = runs_frame(sweep)
    finished = set(runs["point"])
    reference_of = {p: r for p, r in sweep.reference.items() if p in finished and r in finished}
    ceiling_of = {p: c for p, c in sweep.ceiling.items() if p in finished and c in finished}
    first = sweep.runs[0].config
    out = Path(out_dir or sweep.results_dir)
    staging = out / f".writing-{os.getpid()}"
    try:
        tables = write_results(
            runs,
            staging,
            f"Sweep `{sweep.name}` ({sweep.path})",
            sweep.grid_keys,
            reference_of,
            first.decode.output,
            first.eval.answer_pattern,
            ceiling_of,
        )
        for written in staging.iterdir():
            os.replace(written, out / written.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return tables
