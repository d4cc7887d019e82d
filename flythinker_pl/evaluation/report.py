"""Comparison tables and position-segment plots, rebuilt from scores alone (no run state)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, NamedTuple

import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global figure state, no display backend

from .metrics import METRICS

CSV_NAME, PNG_NAME = "position_eval.csv", "position_eval.png"
METRIC_LABELS = {"bleu": "BLEU (0-100)", "rouge1": "ROUGE-1 F", "rougeL": "ROUGE-L F", "meteor": "METEOR"}


def comparison_table(scores_by_run: Mapping[str, Mapping]) -> pd.DataFrame:
    """One row per run: count, the metrics, then any bootstrap interval columns. Print it with
    `.to_markdown(floatfmt=".4f")`."""
    table = pd.DataFrame.from_dict(scores_by_run, orient="index")
    intervals = [f"{name}_ci_{side}" for name in METRICS for side in ("low", "high")]
    columns = [column for column in ("count", *METRICS, *intervals) if column in table]
    return table[columns].rename_axis("run")


def segment_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Position-segment scores as numbers: one row per window ("0-50"), one column per metric and
    run ("bleu (sft)", "bleu (flythinker)", ...; plain "bleu" for a frame without a `run` column),
    and the samples reaching each window ("count ...")."""
    frame = (frame if "run" in frame else frame.assign(run="")).assign(
        segment=frame["segment_start"].astype(str) + "-" + frame["segment_end"].astype(str))
    counts = frame.drop_duplicates(["run", "segment"]).assign(metric="count", value=lambda rows: rows["count"])
    table = pd.concat([frame, counts]).pivot(index="segment", columns=["metric", "run"], values="value")
    metric_order, run_order = [*METRICS, "count"], list(dict.fromkeys(frame["run"]))
    columns = sorted(table.columns, key=lambda column: (metric_order.index(column[0]), run_order.index(column[1])))
    table = table.reindex(index=list(dict.fromkeys(frame["segment"])), columns=columns)
    table.columns = [f"{metric} ({run})" if run else metric for metric, run in columns]
    return table


def plot_position_eval(frame: pd.DataFrame) -> Figure:
    """Metric vs window, one subplot per metric and one for the samples reaching each window; one
    line per run (frames from several runs carry a `run` column)."""
    frame = frame if "run" in frame else frame.assign(run="run")
    metrics = [name for name in METRICS if name in set(frame["metric"])]
    figure = Figure(figsize=(3.4 * (len(metrics) + 1), 3.2), layout="constrained")
    axes = figure.subplots(1, len(metrics) + 1, squeeze=False)[0]
    for run, rows in frame.groupby("run", sort=False):
        centres = (rows["segment_start"] + rows["segment_end"]) / 2
        for axis, name in zip(axes, metrics):
            selected = rows["metric"] == name
            axis.plot(centres[selected], rows.loc[selected, "value"], marker="o", label=run)
        counts = rows.drop_duplicates("segment_start")
        axes[-1].plot((counts["segment_start"] + counts["segment_end"]) / 2, counts["count"], marker="o", label=run)
    for axis, title in zip(axes, [METRIC_LABELS[name] for name in metrics] + ["samples reaching window"]):
        axis.set(title=title, xlabel="position (window centre)")
        axis.grid(alpha=0.3)
    axes[0].legend()
    return figure


class PositionEvalFiles(NamedTuple):
    csv: Path
    png: Path
    figure: Figure  # e.g. for TensorBoard: logger.experiment.add_figure("position_eval", figure)


def save_position_eval(frame: pd.DataFrame, out_dir: str | Path) -> PositionEvalFiles:
    """Write position_eval.csv and position_eval.png into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figure = plot_position_eval(frame)
    frame.to_csv(out_dir / CSV_NAME, index=False)
    figure.savefig(out_dir / PNG_NAME, dpi=120)
    return PositionEvalFiles(out_dir / CSV_NAME, out_dir / PNG_NAME, figure)
