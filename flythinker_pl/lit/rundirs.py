"""Run directories: `<root>/<experiment>/version_N/`, found by number, created atomically, the
commit they record, and the warm start a method=coconut run reads from a method=cot run."""
from __future__ import annotations

import subprocess
from pathlib import Path

import torch

from ..config import Config, ConfigError, load_config

GENERATOR_KEYS = ("name", "mode", "lora_r", "lora_alpha", "lora_targets")  # what a warm start must share
CHECKPOINT_PREFIX = "method.generator."  # MethodModule.method.generator: SFT's (cot) and Coconut's alike


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


def _newest_finished_cot(experiment_dir: Path) -> Path | None:
    """The newest run that finished training as method=cot (an experiment dir may hold other runs,
    this Coconut run among them once it finished)."""
    runs = [p for p in versions(experiment_dir) if (p / "metrics.json").exists()
            and load_config(p / "config.yaml").method == "cot"]
    return runs[-1] if runs else None


def cot_checkpoint(init_from: str) -> tuple[Path, Path | None]:
    """(checkpoint, its run dir if any) for `coconut.init_from`: a .ckpt file, a run dir (its
    checkpoints/last.ckpt) or an experiment dir (its newest finished method=cot run's). Decoding and
    resuming rebuild the method and so read it again (the run's own checkpoint then replaces it)."""
    path = Path(init_from).expanduser()
    if path.is_file():
        run_dir = path.parent.parent
        return path, run_dir if (run_dir / "config.yaml").exists() else None
    run_dir = path if (path / "config.yaml").exists() else _newest_finished_cot(path) if path.is_dir() else None
    checkpoint = run_dir / "checkpoints" / "last.ckpt" if run_dir else None
    if checkpoint is None or not checkpoint.exists():
        raise ConfigError(f"coconut.init_from={init_from!r}: no checkpoint there (expected a .ckpt file, a run dir "
                          "with checkpoints/last.ckpt or an experiment dir with a finished run): train the "
                          "method=cot run first")
    return checkpoint, run_dir


def cot_weights(cfg: Config) -> dict[str, torch.Tensor]:
    """The Generator weights a method=cot run trained (its checkpoint holds trainable weights only)."""
    checkpoint, run_dir = cot_checkpoint(cfg.coconut.init_from)
    if run_dir is not None:
        trained = load_config(run_dir / "config.yaml")
        differing = [f"generator.{key}" for key in GENERATOR_KEYS
                     if getattr(trained.generator, key) != getattr(cfg.generator, key)]
        if trained.method != "cot" or differing:
            raise ConfigError(f"coconut.init_from={cfg.coconut.init_from!r} ({run_dir}) must be a method=cot run of "
                              f"this Generator (got method={trained.method}; differing: {differing or 'none'})")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    foreign = [key for key in state if not key.startswith(CHECKPOINT_PREFIX)]
    if foreign or not state:
        raise ConfigError(f"coconut.init_from: {checkpoint} holds {foreign[:3] or 'no weights'}, not a Generator "
                          "trained by method=cot")
    return {key.removeprefix(CHECKPOINT_PREFIX): value for key, value in state.items()}
