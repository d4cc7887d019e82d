"""A sweep's runs as jobs: PointJob, the one callable a launcher sends anywhere, and the manifest
that records which job runs which run."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

from filelock import FileLock
from submitit.core.utils import JobPaths
from submitit.helpers import Checkpointable

from ..config import Config

MANIFEST = "jobs.json"


class PointJob(Checkpointable):
    """One run of a sweep (a point x seed): what `flythinker run` runs for its config, in the directory
    the sweep was launched from. Picklable, so submitit can carry it to a SLURM node or a process here.
    Checkpointable: at SLURM's signal before the time limit, submitit requeues the job with this same
    callable, and the rerun continues the run from its newest checkpoint (train.resume=auto), as
    rerunning `flythinker run` would after any interruption."""

    def __init__(self, key: str, config: Config, cwd: str, threads: Optional[int] = None):
        self.key, self.config, self.cwd, self.threads = key, config, cwd, threads

    def __call__(self) -> str:
        import torch

        from ..console import silence_known_noise
        from ..lit.run import run_experiment

        os.chdir(self.cwd)  # the config's relative paths (logging.root_dir, data files) mean what they did there
        threads = self.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", 0)) or None
        if threads:  # the job's share of the cores; OMP_NUM_THREADS also keeps Lightning's DDP from choosing
            os.environ["OMP_NUM_THREADS"] = str(threads)
            torch.set_num_threads(threads)
        silence_known_noise()
        print(
            f"{self.key} in {self.cwd}: {sys.executable}, {torch.get_num_threads()} torch threads, "
            f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '(unset)')}",
            flush=True,
        )
        return str(run_experiment(self.config))


class Manifest:
    """<results>/jobs.json: for every run submitted, its launcher, job id, the folder of the job's
    submitit files (pickles, logs) and earlier job ids; plus the command-line overrides the jobs were
    submitted with. Rewritten whole and renamed into place, so a reader never sees half of it;
    `lock()` serialises commands that submit."""

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / MANIFEST
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {"overrides": [], "runs": {}}

    def lock(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.path) + ".lock")

    def entry(self, key: str) -> Optional[dict]:
        return self.data["runs"].get(key)

    def record(self, key: str, launcher: str, job_id: str, folder: str | Path) -> None:
        earlier = self.entry(key)
        history = [*earlier.get("earlier", []), earlier["job_id"]] if earlier else []
        self.data["runs"][key] = {
            "launcher": launcher,
            "job_id": job_id,
            "folder": str(folder),
            "submitted": time.strftime("%Y-%m-%d %H:%M:%S"),
            "earlier": history,
        }
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(self.data, indent=2) + "\n")
        os.replace(partial, self.path)


def job_paths(entry: dict) -> JobPaths:
    """A recorded job's submitit files (task 0: the log, the error log, the result)."""
    return JobPaths(entry["folder"], entry["job_id"], task_id=0)
