"""Run directories, their one home: where runs live (`<root>/<experiment>/version_N/`, claimed
atomically), which one a config continues (unfinished) or reuses (finished, decoded and scored), what
they hold (checkpoints, the eval settings behind the scores, the commit), and the warm start a
method=coconut run reads from a method=cot run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Optional

import torch
from omegaconf import OmegaConf

from ..config import Config, ConfigError, EvalConfig, load_config, to_yaml
from .launch import agree_across_ranks

GENERATOR_KEYS = ("name", "mode", "lora_r", "lora_alpha", "lora_targets")  # what a warm start must share
CHECKPOINT_PREFIX = "method.generator."  # MethodModule.method.generator: SFT's (cot) and Coconut's alike
# Set by the launching process so that every DDP rank uses the same run dir and resume point.
RUN_DIR_ENV, RESUME_ENV = "FLYTHINKER_RUN_DIR", "FLYTHINKER_RESUME_FROM"
# What each stage's outputs do not depend on: changing these reuses the stage instead of redoing it.
NOT_TRAINING, NOT_DECODING = ("decode", "eval", "logging"), ("eval", "logging")
EVAL_CONFIG = "eval_config.yaml"  # the eval settings behind a run dir's scores


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
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout.strip()
        return commit.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def run_dirs(cfg: Config) -> list[Path]:
    """This experiment's run dirs, oldest first."""
    return versions(Path(cfg.logging.root_dir) / cfg.logging.experiment)


def same_settings(saved: Path, cfg: Config, without: tuple[str, ...]) -> bool:
    """Whether the config saved at `saved` equals `cfg` on every group but `without`."""
    return saved.exists() and to_yaml(load_config(saved), without) == to_yaml(cfg, without)


def finished_run(cfg: Config) -> Optional[Path]:
    """The newest run of this experiment that finished training with these training settings."""
    for run_dir in reversed(run_dirs(cfg)):
        if (run_dir / "metrics.json").exists() and same_settings(run_dir / "config.yaml", cfg, NOT_TRAINING):
            return run_dir
    return None


def resume_checkpoint(run_dir: Path) -> Optional[Path]:
    """The run's newest checkpoint to continue from: checkpoints/last.ckpt (every validation) or
    an hpc_ckpt_N.ckpt that Lightning saved on SLURM's pre-emption signal, whichever is newer."""
    saved = [p for p in [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")] if p.exists()]
    return max(saved, key=lambda p: p.stat().st_mtime_ns, default=None)


def choose_run_dir(cfg: Config) -> tuple[Path, Optional[str]]:
    """(run dir, checkpoint to resume from). With train.resume=auto, the newest unfinished run of
    this experiment whose saved config equals this one continues from its newest checkpoint.
    Every rank of a launch gets the same answer: ranks that Lightning starts read the launching
    process's from the environment; under torchrun/srun, global rank 0 decides for all (launch.py)."""
    if RUN_DIR_ENV in os.environ:  # a DDP rank started by the process that chose
        return Path(os.environ[RUN_DIR_ENV]), os.environ.get(RESUME_ENV) or None
    run_dir, resume_from = agree_across_ranks("run_dir", lambda: _new_or_unfinished(cfg))
    return Path(run_dir), resume_from


def unfinished_run(cfg: Config) -> Optional[tuple[Path, Path]]:
    """(run dir, checkpoint) of the run that train.resume=auto continues: this experiment's newest,
    stopped mid-training with these training settings. None if there is none (nothing is created)."""
    existing = run_dirs(cfg)
    if cfg.train.resume == "auto" and existing:
        newest = existing[-1]
        checkpoint = resume_checkpoint(newest)
        if (
            checkpoint
            and not (newest / "metrics.json").exists()
            and same_settings(newest / "config.yaml", cfg, NOT_TRAINING)
        ):
            return newest, checkpoint
    return None


def _new_or_unfinished(cfg: Config) -> tuple[str, Optional[str]]:
    """(run dir, checkpoint to resume from or None), as strings: rank 0 sends them to the others.
    A new run dir is created here, atomically (new_version)."""
    unfinished = unfinished_run(cfg)
    if unfinished:
        return str(unfinished[0]), str(unfinished[1])
    run_dir = new_version(Path(cfg.logging.root_dir) / cfg.logging.experiment)
    return str(run_dir), None if cfg.train.resume in ("auto", "never") else cfg.train.resume


def trained_weights(run_dir: Path) -> Path:
    """The checkpoint `predict` decodes a trained run with: last.ckpt, or under trainer.strategy=fsdp
    (a sharded last.ckpt/ directory) the weights exported from it at the end of fit."""
    from .sharding import EXPORT_NAME

    last = run_dir / "checkpoints" / "last.ckpt"
    return run_dir / "checkpoints" / EXPORT_NAME if last.is_dir() else last


def eval_yaml(cfg: EvalConfig) -> str:
    """The eval settings as EVAL_CONFIG holds them: scores are reused while they match."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def finished_run_dir(path: str | Path) -> Path:
    """A run dir, or an experiment dir whose newest finished version (with metrics.json) is taken."""
    return holding(path, "metrics.json", "no finished run (a run dir with metrics.json) found")


def decoded_and_scored(run_dir: Path, cfg: Config) -> bool:
    predictions, scored = run_dir / cfg.decode.output, run_dir / EVAL_CONFIG
    return (
        predictions.exists()
        and same_settings(predictions.with_suffix(".config.yaml"), cfg, NOT_DECODING)
        and scored.exists()
        and scored.read_text() == eval_yaml(cfg.eval)
    )


def completed_run(cfg: Config) -> Optional[Path]:
    """The run dir holding this config's training, decoding and scores, or None."""
    run_dir = finished_run(cfg)
    return run_dir if run_dir is not None and decoded_and_scored(run_dir, cfg) else None


def _newest_finished_cot(experiment_dir: Path) -> Path | None:
    """The newest run that finished training as method=cot (an experiment dir may hold other runs,
    this Coconut run among them once it finished)."""
    runs = [
        p
        for p in versions(experiment_dir)
        if (p / "metrics.json").exists() and load_config(p / "config.yaml").method == "cot"
    ]
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
        raise ConfigError(
            f"coconut.init_from={init_from!r}: no checkpoint there (expected a .ckpt file, a run dir "
            "with checkpoints/last.ckpt or an experiment dir with a finished run): train the "
            "method=cot run first"
        )
    return checkpoint, run_dir


def cot_weights(cfg: Config) -> dict[str, torch.Tensor]:
    """The Generator weights a method=cot run trained (its checkpoint holds trainable weights only)."""
    checkpoint, run_dir = cot_checkpoint(cfg.coconut.init_from)
    if run_dir is not None:
        trained = load_config(run_dir / "config.yaml")
        differing = [
            f"generator.{key}"
            for key in GENERATOR_KEYS
            if getattr(trained.generator, key) != getattr(cfg.generator, key)
        ]
        if trained.method != "cot" or differing:
            raise ConfigError(
                f"coconut.init_from={cfg.coconut.init_from!r} ({run_dir}) must be a method=cot run of "
                f"this Generator (got method={trained.method}; differing: {differing or 'none'})"
            )
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    foreign = [key for key in state if not key.startswith(CHECKPOINT_PREFIX)]
    if foreign or not state:
        raise ConfigError(
            f"coconut.init_from: {checkpoint} holds {foreign[:3] or 'no weights'}, not a Generator "
            "trained by method=cot"
        )
    return {key.removeprefix(CHECKPOINT_PREFIX): value for key, value in state.items()}
