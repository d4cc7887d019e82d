"""Run directories: `<root>/<experiment>/version_N/`, found by number, created atomically, and the
commit they record."""
from __future__ import annotations

import subprocess
from pathlib import Path


def version_number(run_dir: Path) -> int:
    return int(run_dir.name.removeprefix("version_"))


def versions(experiment_dir: str | Path) -> list[Path]:
    """An experiment's run dirs, oldest first."""
    found = Path(experiment_dir).glob("version_*")
    return sorted((p for p in found if p.name.removeprefix("version_").isdigit()), key=version_number)


def new_version(experiment_dir: str | Path) -> Path:
    """A new run dir, version_N one above the highest, created here. mkdir either creates or fails,
    so processes starting runs of one experiment at once (jobs of a sweep, two users) never share
    a version: the one that loses the race takes the next number."""
    experiment_dir = Path(experiment_dir)
    while True:
        existing = versions(experiment_dir)
        run_dir = experiment_dir / f"version_{version_number(existing[-1]) + 1 if existing else 0}"
        try:
            experiment_dir.mkdir(parents=True, exist_ok=True)
            run_dir.mkdir()
            return run_dir
        except (FileExistsError, FileNotFoundError):  # taken, or the empty experiment dir just removed
            continue


def holding(path: str | Path, filename: str, missing: str) -> Path:
    """`path` if it holds `filename`, else the newest run dir under it (an experiment dir) that does."""
    path = Path(path)
    if (path / filename).exists():
        return path
    with_file = [run_dir for run_dir in versions(path) if (run_dir / filename).exists()]
    if not with_file:
        raise FileNotFoundError(f"{path}: {missing}")
    return with_file[-1]


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True).stdout.strip()
        return commit.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
