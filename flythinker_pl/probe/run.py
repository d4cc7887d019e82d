"""`flythinker probe RUN [RUN ...]`: features of every run, probes, then probe.csv/.md and the plots."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import pandas as pd

from ..config import ConfigError, load_config
from ..lit.evaluate import run_name
from ..lit.rundirs import finished_run_dir
from .attributes import personas_file, user_labels
from .features import TRAIN_PER_USER, WINDOW_STARTS, run_features, window_names
from .fit import probe_run
from .report import markdown, plot_pca, plot_vs_position, summary, user_trajectories

COLUMNS = [
    "run",
    "label",
    "method",
    "source",
    "attribute",
    "window",
    "accuracy",
    "ci_low",
    "ci_high",
    "chance",
    "n_train",
    "n_test",
    "n_test_users",
    "classes",
]


def labels_of(run_dirs: list[Path]) -> list[str]:
    """The experiment's name where it tells the runs apart (sweep points: "flythinker,seed=0"), else the run's."""
    experiments = [run_dir.parent.name for run_dir in run_dirs]
    return [name if experiments.count(name) == 1 else run_name(run_dir) for name, run_dir in zip(experiments, run_dirs)]


def probe_runs(
    paths: list[str | Path],
    out: Optional[str | Path] = None,
    held_out: tuple[str, ...] = ("val", "test"),
    color_by: str = "arc",
    n_bootstrap: int = 1000,
    starts: tuple[int, ...] = WINDOW_STARTS,
    train_per_user: Optional[int] = TRAIN_PER_USER,
) -> tuple[pd.DataFrame, Path]:
    """(probe.csv's rows, the output dir). Users' labels come from each run's own data set."""
    if not starts or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
        raise ConfigError(
            f"probe windows {list(starts)}: give each window's first response position, "
            "increasing from 0 (0 = the prompt's last token)"
        )
    run_dirs = [finished_run_dir(path) for path in paths]
    out = Path(out) if out else run_dirs[0] / "probe"
    windows, frames, panels = window_names(starts), [], []
    for run_dir, label in zip(run_dirs, labels_of(run_dirs)):
        began = time.perf_counter()
        labels = user_labels(personas_file(load_config(run_dir / "config.yaml"), run_dir))
        run = run_features(run_dir, held_out, starts, train_per_user)
        frames.append(
            probe_run(run, labels, windows, n_bootstrap).assign(run=run_name(run_dir), label=label, method=run.method)
        )
        if color_by in labels:
            panels += [
                (f"{label} {source}", *user_trajectories(run, source, labels[color_by])) for source in run.features
            ]
        print(
            f"probed {run_name(run_dir)} ({run.method}): {len(run.records)} records, "
            f"{time.perf_counter() - began:.0f} s",
            flush=True,
        )
    frame = pd.concat(frames, ignore_index=True)[COLUMNS]
    out.mkdir(parents=True, exist_ok=True)
    frame.round(4).to_csv(out / "probe.csv", index=False)
    (out / "probe.md").write_text(markdown(frame))
    plot_vs_position(frame).savefig(out / "probe_vs_position.png", dpi=110)
    if panels:
        plot_pca(panels, color_by).savefig(out / "pca.png", dpi=110)
    return frame, out


def print_summary(frame: pd.DataFrame, out: Path) -> None:
    print(summary(frame).to_markdown())
    written = ", ".join(
        name for name in ("probe.csv", "probe.md", "probe_vs_position.png", "pca.png") if (out / name).exists()
    )
    print(f"Probe results: {out}/ ({written})")
