"""Comparison tables and position-segment plots, rebuilt from scores alone (no run state)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, NamedTuple, Optional

import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global figure state, no display backend
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .metrics import METRICS
from .palette import REFERENCE_COLOUR, line_styles

CSV_NAME, PNG_NAME = "position_eval.csv", "position_eval.png"
METRIC_LABELS = {
    "bleu": "BLEU (0-100)",
    "rouge1": "ROUGE-1 F1 (0-1)",
    "rougeL": "ROUGE-L F1 (0-1)",
    "meteor": "METEOR (0-1)",
}
PANEL_LABELS = {**METRIC_LABELS, "samples": "outputs reaching window"}
MIN_SAMPLES = 10  # windows scored over fewer samples are drawn hollow: a mean of 1-2 outputs is noise
SAMPLE_COUNTS = ("count", "outputs")  # per window: samples scored (references reaching it), outputs reaching it
COUNTS_NOTE = "count = samples scored: their reference reaches the window; outputs = outputs that reach it"


def comparison_table(scores_by_run: Mapping[str, Mapping]) -> pd.DataFrame:
    """One row per run: count, empty predictions where any run has some (and those dropped, under
    eval.empty=drop), the metrics (BERTScore where scored), then any bootstrap interval columns.
    Print it with `.to_markdown(floatfmt=".4f")`."""
    table = pd.DataFrame.from_dict(scores_by_run, orient="index")
    if "bertscore" in table and table["bertscore"].isna().all():  # no model given: nothing to show
        table = table.drop(columns="bertscore")
    if "empty" in table and not table["empty"].fillna(0).any():
        table = table.drop(columns="empty")
    metrics = [*METRICS, "bertscore"]
    intervals = [f"{name}_ci_{side}" for name in metrics for side in ("low", "high")]
    columns = [column for column in ("count", "empty", "dropped", *metrics, *intervals) if column in table]
    return table[columns].rename_axis("run")


def segment_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Position-segment scores as numbers: one row per window ("0-50"), one column per metric and
    run ("bleu (sft)", "bleu (flythinker)", ...; plain "bleu" for a frame without a `run` column),
    the samples scored in each window ("count ...": their references reach it) and the outputs
    that reach it ("outputs ...", where the frame has them)."""
    frame = (frame if "run" in frame else frame.assign(run="")).assign(
        segment=frame["segment_start"].astype(str) + "-" + frame["segment_end"].astype(str)
    )
    first = frame.drop_duplicates(["run", "segment"])
    counts = [first.assign(metric=name, value=first[name]) for name in SAMPLE_COUNTS if name in frame]
    table = pd.concat([frame, *counts]).pivot(index="segment", columns=["metric", "run"], values="value")
    metric_order, run_order = [*METRICS, *SAMPLE_COUNTS], list(dict.fromkeys(frame["run"]))
    columns = sorted(table.columns, key=lambda column: (metric_order.index(column[0]), run_order.index(column[1])))
    table = table.reindex(index=list(dict.fromkeys(frame["segment"])), columns=columns)
    table.columns = [f"{metric} ({run})" if run else metric for metric, run in columns]
    return table


def _lines(frame: pd.DataFrame) -> list[tuple[Optional[str], pd.DataFrame]]:
    """The frame's lines: one per `label` (else per `run`), or one unlabelled line."""
    key = next((column for column in ("label", "run") if column in frame), None)
    return [(None, frame)] if key is None else list(frame.groupby(key, sort=False))


def _styles(frame: pd.DataFrame) -> dict[Optional[str], dict]:
    """Each line's colour, line style and marker (palette.py): by the `method` column where the frame
    has one, else by the label where it names a method."""
    lines = _lines(frame)
    methods = [rows["method"].iloc[0] if "method" in rows else label for label, rows in lines]
    return {label: style for (label, _), style in zip(lines, line_styles(methods))}


def position_label(frame: pd.DataFrame) -> str:
    """The x label, with the unit the windows were cut in (the `unit` column; absent in old CSVs)."""
    units = sorted(set(frame["unit"].dropna())) if "unit" in frame else []
    return f"position in output ({', '.join(units)})" if units else "position in output"


def comparison_title(split: str, labels: list[str]) -> str:
    """What a comparison plot compares: "test split: sft vs flythinker"."""
    return f"{split} split: {' vs '.join(labels)}"


def _draw(axis, frame: pd.DataFrame, panel: str, min_samples: int) -> None:
    """One panel: a metric per window centre, one line per run with its 95% interval as a band (where
    the frame has one); windows scored over fewer than `min_samples` samples get hollow markers.
    The "samples" panel: each run's outputs that reach the window, and the references that do (grey,
    dashed: the samples each window is scored over)."""
    styles = _styles(frame)
    for label, rows in _lines(frame):
        style = styles[label]
        rows = rows.drop_duplicates("segment_start") if panel == "samples" else rows[rows["metric"] == panel]
        x = ((rows["segment_start"] + rows["segment_end"]) / 2).to_numpy()
        few = (rows["count"] < min_samples).to_numpy()
        if panel == "samples":
            axis.plot(x, rows["count"], color=REFERENCE_COLOUR, linestyle="--", linewidth=1)
            if "outputs" not in rows:  # an old CSV: the references' counts are all there is
                continue
        y = rows["outputs" if panel == "samples" else "value"].to_numpy(dtype=float)
        axis.plot(x, y, markevery=list(~few), label=label, **style)
        axis.plot(
            x[few], y[few], linestyle="none", marker=style["marker"], markerfacecolor="none", color=style["color"]
        )
        if panel != "samples" and "ci_low" in rows and rows["ci_low"].notna().any():
            axis.fill_between(x, rows["ci_low"], rows["ci_high"], color=style["color"], alpha=0.15, linewidth=0)
    if panel == "samples":
        axis.axhline(min_samples, color="grey", linestyle=":", linewidth=1)
    axis.set(xlabel=position_label(frame), ylabel=PANEL_LABELS[panel])
    axis.grid(alpha=0.3)


def _handles(axis, frame: pd.DataFrame, min_samples: int, panels: list[str]) -> list:
    """The legend of `panels`: the runs' lines, then what a band, the grey dashed line and a hollow
    marker mean (where they are drawn)."""
    handles, _ = axis.get_legend_handles_labels()
    if set(panels) - {"samples"} and "ci_low" in frame and frame["ci_low"].notna().any():
        handles.append(Patch(color="grey", alpha=0.3, label="95% bootstrap interval"))
    if "samples" in panels:
        handles.append(
            Line2D(
                [],
                [],
                color=REFERENCE_COLOUR,
                linestyle="--",
                linewidth=1,
                label="references reaching the window" if "outputs" in frame else "samples",
            )
        )
    if (frame["count"] < min_samples).any():
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="o",
                markerfacecolor="none",
                color="grey",
                label=f"fewer than {min_samples} samples",
            )
        )
    return handles


def _panels(frame: pd.DataFrame) -> list[str]:
    return [name for name in METRICS if name in set(frame["metric"])] + ["samples"]


def plot_position_eval(frame: pd.DataFrame, title: str = "", min_samples: int = MIN_SAMPLES) -> Figure:
    """Metric vs window, one subplot per metric and one for the samples reaching each window; one
    line per `label` (else `run`) when the frame has several runs; one legend under the panels."""
    panels = _panels(frame)
    figure = Figure(figsize=(3.6 * len(panels), 4.0), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for axis, panel in zip(axes, panels):
        _draw(axis, frame, panel, min_samples)
    handles = _handles(axes[0], frame, min_samples, panels)
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=8)
    if title:
        figure.suptitle(title)
    return figure


def position_panels(frame: pd.DataFrame, title: str = "", min_samples: int = MIN_SAMPLES) -> dict[str, Figure]:
    """The same panels as separate figures, by panel name ("bleu", ..., "samples"): TensorBoard
    shows each image at a fixed size, where a strip of five would read as a thumbnail."""
    figures = {}
    for panel in _panels(frame):
        figure = Figure(figsize=(6, 4), layout="constrained")
        axis = figure.subplots()
        _draw(axis, frame, panel, min_samples)
        axis.legend(handles=_handles(axis, frame, min_samples, [panel]), fontsize=7)
        axis.set_title(f"{title}: {PANEL_LABELS[panel]}" if title else PANEL_LABELS[panel], fontsize=10)
        figures[panel] = figure
    return figures


def log_position_panels(writer, tag: str, frame: pd.DataFrame, title: str = "", step: Optional[int] = None) -> None:
    """Each panel as its own TensorBoard image, `<tag>/<panel>` (writer: a SummaryWriter)."""
    for panel, figure in position_panels(frame, title).items():
        writer.add_figure(f"{tag}/{panel}", figure, step, close=False)


class PositionEvalFiles(NamedTuple):
    csv: Path
    png: Path
    figure: Figure


def save_position_eval(frame: pd.DataFrame, out_dir: str | Path, title: str = "") -> PositionEvalFiles:
    """Write position_eval.csv and position_eval.png (all panels in one strip) into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figure = plot_position_eval(frame, title)
    frame.to_csv(out_dir / CSV_NAME, index=False)
    figure.savefig(out_dir / PNG_NAME, dpi=120)
    return PositionEvalFiles(out_dir / CSV_NAME, out_dir / PNG_NAME, figure)
