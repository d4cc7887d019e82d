"""A sweep's tables and plots, from one row per finished run (point, seed, grid settings, run_dir and
every metrics.json key): mean and std over seeds per point, position windows, metric plots, and the
gaps against each point's reference (gaps.py). Reads run dirs named in the rows, nothing else."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import pandas as pd
from matplotlib.figure import Figure

from .gaps import gap_table, gaps_markdown, heatmap_keys, plot_gaps, plot_heatmaps, plot_segment_gaps, segment_gaps
from .metrics import METRICS
from .palette import line_styles
from .report import COUNTS_NOTE, CSV_NAME, METRIC_LABELS, PNG_NAME, SAMPLE_COUNTS, plot_position_eval, segment_table

SUMMARY_METRICS = [
    "val/loss",
    "test/bleu",
    "test/rouge1",
    "test/rougeL",
    "test/meteor",
    "test/answer_accuracy",
    "perf/train_tokens_per_s",
    "perf/peak_memory_mb",
    "decode/ms_per_token",
    "decode/seconds_per_sample",
]
LAMBDA_SWEEP = "lambda_sweep/val_loss@"  # + inference-time lambda, logged by the lambda-sweep callback
UNITS = {
    "val/loss": "nats/token",
    "perf/train_tokens_per_s": "tokens/s",
    "perf/peak_memory_mb": "MiB",
    "decode/ms_per_token": "ms/token",
    "decode/seconds_per_sample": "s/sample",
}
SPREAD_NOTE = "mean ± sample std over seeds (no bar: one seed)"


def swept_lambdas(columns) -> dict[str, float]:
    """The lambda_sweep/val_loss@<lam> columns among `columns`, by lambda: {column: lam}."""
    found = {c: re.fullmatch(re.escape(LAMBDA_SWEEP) + r"([0-9.e+-]+)", c) for c in columns}
    return dict(sorted(((c, float(m[1])) for c, m in found.items() if m), key=lambda item: item[1]))


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """SUMMARY_METRICS present in the runs, then lambda_sweep/ columns by lambda."""
    return [c for c in SUMMARY_METRICS if c in runs] + list(swept_lambdas(runs))


def summary_table(runs: pd.DataFrame, grid_keys: list[str] = ()) -> pd.DataFrame:
    """One row per point (in sweep order): its method and grid settings, then mean and `<metric>_std`
    (sample std, ddof=1; empty for one seed) over seeds of every metric column, and n_seeds."""
    metrics = metric_columns(runs)
    grouped = runs.groupby("point", sort=False)
    mean, std = grouped[metrics].mean(), grouped[metrics].std()
    keys = dict.fromkeys(["method", *grid_keys])  # `method` may be a grid key too: one column each
    table = grouped[[key for key in keys if key in runs]].first()
    for metric in metrics:
        table[metric], table[f"{metric}_std"] = mean[metric], std[metric]
    table["n_seeds"] = grouped.size()
    return table


def markdown(table: pd.DataFrame) -> str:
    """The summary as markdown: "mean ± std" per metric, grid settings left out (they are the labels)."""
    cells = pd.DataFrame(index=table.index)
    for metric in (c for c in table if f"{c}_std" in table):
        cells[metric] = [
            "" if pd.isna(m) else f"{m:.4g}" if pd.isna(s) else f"{m:.4g} ± {s:.2g}"
            for m, s in zip(table[metric], table[f"{metric}_std"])
        ]
    cells["n_seeds"] = table["n_seeds"]
    return cells.to_markdown()


def segments_markdown(segments: pd.DataFrame) -> str:
    """The segment table as one markdown table per metric (rows: windows, columns: points)."""
    blocks = []
    for metric in [*METRICS, *SAMPLE_COUNTS]:
        columns = [c for c in segments if c.startswith(f"{metric} (")]
        if columns:
            block = segments[columns].rename(columns=lambda c: c[len(metric) + 2 : -1])
            blocks.append(f"{metric}:\n\n{block.to_markdown(floatfmt='.4g')}")
    return "\n\n".join(blocks)


def segments_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Position-window scores per point, mean over its seeds, in report.plot_position_eval's layout:
    the point in `run`, the plots' line label in `label` ("<point>, seed 0" or "<point>, mean of 2 seeds")
    and its method in `method` (the plots' colour). A window's interval is kept for a point of one
    seed only: the mean of several seeds' interval ends is no interval."""
    frames = [
        pd.read_csv(Path(run_dir) / CSV_NAME).assign(run=point, seed=seed)
        for point, seed, run_dir in zip(runs["point"], runs["seed"], runs["run_dir"])
        if (Path(run_dir) / CSV_NAME).exists()
    ]
    if not frames:
        return pd.DataFrame()
    frame = pd.concat(frames)
    seeds = frame.groupby("run", sort=False)["seed"].unique()
    keys = ["run", "segment_start", "segment_end", "metric", *(["unit"] if "unit" in frame else [])]
    numbers = [c for c in ("value", "ci_low", "ci_high", *SAMPLE_COUNTS) if c in frame]
    frame = frame.groupby(keys, sort=False, as_index=False, dropna=False)[numbers].mean()
    if "ci_low" in frame:
        several = frame["run"].map(seeds.map(len)) > 1
        frame.loc[several, ["ci_low", "ci_high"]] = float("nan")
    labels = {
        point: f"{point}, seed {s[0]}" if len(s) == 1 else f"{point}, mean of {len(s)} seeds"
        for point, s in seeds.items()
    }
    frame = frame.assign(label=frame["run"].map(labels))
    return frame.assign(method=frame["run"].map(point_methods(runs))) if "method" in runs else frame


def point_methods(runs: pd.DataFrame) -> dict[str, str]:
    """Each point's method (its runs' metrics.json `method`): what colours it in every plot."""
    return runs.groupby("point", sort=False)["method"].first().to_dict() if "method" in runs else {}


def metric_label(metric: str) -> str:
    """An axis label with the metric's scale or unit: "test BLEU (0-100)", "val/loss (nats/token)"."""
    split, _, name = metric.rpartition("/")
    if name in METRIC_LABELS:
        return f"{split} {METRIC_LABELS[name]}"
    return f"{metric} ({UNITS[metric]})" if metric in UNITS else metric


def _band(axis, x, table: pd.DataFrame, metric: str, **style) -> None:
    """Mean with its sample std over seeds as a band; a point of one seed has no std and so no band."""
    axis.plot(x, table[metric], **style)
    spread = table[f"{metric}_std"].astype(float)
    axis.fill_between(x, table[metric] - spread, table[metric] + spread, color=style["color"], alpha=0.15, linewidth=0)


def _styles(table: pd.DataFrame) -> list[dict]:
    """The points' colours (by method) and line styles, in table order."""
    return line_styles(table["method"] if "method" in table else [None] * len(table))


def _title(figure: Figure, title: str, note: str = SPREAD_NOTE) -> None:
    figure.suptitle(f"{title}\n{note}" if title else note, fontsize=9)


def _metric_axes(table: pd.DataFrame, width: float, height: float = 3.4) -> tuple[Figure, list]:
    """A figure and its (metric, axis) panels, one per summary metric in the table, four to a row."""
    metrics = [m for m in SUMMARY_METRICS if m in table]
    rows, columns = -(-len(metrics) // 4), min(4, len(metrics))
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis in axes[len(metrics) :]:
        axis.set_visible(False)
    return figure, list(zip(metrics, axes))


def plot_metrics(table: pd.DataFrame, title: str = "") -> Figure:
    """Every summary metric per point (mean, std over seeds as error bars: the points are categories,
    coloured by method); ticks "<point> (n=<seeds>)"."""
    figure, panels = _metric_axes(table, max(3.2, 0.5 * len(table) + 1.5), 3.8)
    ticks = [f"{point} (n={n})" for point, n in zip(table.index, table["n_seeds"])]
    for metric, axis in panels:
        for x, (style, (_, row)) in enumerate(zip(_styles(table), table.iterrows())):
            axis.errorbar(
                [x], [row[metric]], yerr=[row[f"{metric}_std"]], capsize=3, fmt=style["marker"], color=style["color"]
            )
        axis.set_xticks(range(len(table)), ticks, rotation=35, ha="right", fontsize=8)
        axis.set(title=metric, ylabel=metric_label(metric))
        axis.grid(alpha=0.3)
    _title(figure, title)
    return figure


def plot_versus(table: pd.DataFrame, key: str, grid_keys: list[str], title: str = "") -> Figure:
    """Every summary metric against one numeric grid key: a line per combination of the other grid
    keys, the std over seeds as a band; points without the key (references such as SFT) as dashed
    lines with their std as a band. Colours by method; one legend under the panels."""
    others = [k for k in grid_keys if k != key]
    on_axis, references = table[table[key].notna()], table[table[key].isna()]
    lines = list(on_axis.groupby(others, sort=False, dropna=False)) if others else [((), on_axis)]
    styles = line_styles(
        [
            *(rows["method"].iloc[0] if "method" in rows else None for _, rows in lines),
            *(references["method"] if "method" in references else [None] * len(references)),
        ]
    )
    figure, panels = _metric_axes(table, 3.6)
    for metric, axis in panels:
        for (name, rows), style in zip(lines, styles):
            label = ",".join(f"{k}={v}" for k, v in zip(others, name if isinstance(name, tuple) else [name]))
            rows = rows.sort_values(key)
            _band(axis, rows[key].astype(float), rows, metric, label=label or key, **style)
        for (label, row), style in zip(references.iterrows(), styles[len(lines) :]):
            axis.axhline(row[metric], linestyle="--", color=style["color"], label=label)
            spread = row[f"{metric}_std"]
            if pd.notna(spread):
                axis.axhspan(row[metric] - spread, row[metric] + spread, color=style["color"], alpha=0.12, linewidth=0)
        axis.set(title=metric, xlabel=key, ylabel=metric_label(metric))
        axis.grid(alpha=0.3)
    handles, _ = panels[0][1].get_legend_handles_labels()
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), fontsize=8)
    _title(figure, title)
    return figure


def plot_lambda_sweep(table: pd.DataFrame, title: str = "") -> Figure:
    """Validation loss against the inference-time lambda, one line per point that swept it (std
    over seeds as a band)."""
    lams = swept_lambdas(table)
    columns = list(lams)
    swept = table[table[columns].notna().any(axis=1)]
    figure = Figure(figsize=(4.8, 3.8), layout="constrained")
    axis = figure.subplots()
    for (label, row), style in zip(swept.iterrows(), _styles(swept)):
        values, spread = row[columns].astype(float), row[[f"{c}_std" for c in columns]].astype(float).to_numpy()
        axis.plot(list(lams.values()), values, label=f"{label} (n={int(row['n_seeds'])})", **style)
        axis.fill_between(
            list(lams.values()), values - spread, values + spread, color=style["color"], alpha=0.15, linewidth=0
        )
    axis.set(
        title="val/loss vs lambda at inference (val split)",
        xlabel="fusion lambda at inference",
        ylabel=metric_label("val/loss"),
    )
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    _title(figure, title)
    return figure


def write_results(
    runs: pd.DataFrame,
    out_dir: Path,
    title: str,
    grid_keys: list[str] = (),
    reference_of: Optional[dict[str, str]] = None,
    prediction_file: str = "predictions.jsonl",
    answer_pattern: str = "",
    ceiling_of: Optional[dict[str, str]] = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """table.csv/.md, runs.csv, metrics.png, metrics_vs_<key>.png, lambda_sweep.png, segments.csv/.md,
    position_eval.png and, where points have a reference (`reference_of`: point -> its reference), the
    gap tables and plots (with the share of each point's `ceiling_of` gap), into `out_dir`; returns
    (summary table, segment table)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out_dir / "runs.csv", index=False)
    table = summary_table(runs, grid_keys)
    table.to_csv(out_dir / "table.csv")
    seeds = sorted(set(runs["seed"]))
    (out_dir / "table.md").write_text(f"{title}: mean ± sample std over seeds {seeds}\n\n{markdown(table)}\n")
    runs_title = f"{title}: {len(table)} points, seeds {seeds}"
    plot_metrics(table, runs_title).savefig(out_dir / "metrics.png", dpi=120)
    for key in grid_keys:
        values = table[key].dropna().infer_objects() if key in table else pd.Series(dtype=object)
        if len(values) and pd.api.types.is_numeric_dtype(values):
            plot_versus(table, key, grid_keys, runs_title).savefig(out_dir / f"metrics_vs_{slug(key)}.png", dpi=120)
    if swept_lambdas(table):
        plot_lambda_sweep(table, runs_title).savefig(out_dir / "lambda_sweep.png", dpi=120)
    frame = segments_frame(runs)
    segments = segment_table(frame) if len(frame) else pd.DataFrame()
    if len(frame):
        segments.to_csv(out_dir / "segments.csv")
        (out_dir / "segments.md").write_text(
            f"Per position window, mean over seeds ({COUNTS_NOTE})\n\n{segments_markdown(segments)}\n"
        )
        plot_title = f"{title}, test split: mean over seeds per window"
        plot_position_eval(frame, plot_title).savefig(out_dir / PNG_NAME, dpi=120)
    if reference_of:
        write_gaps(
            runs, table, segments, out_dir, grid_keys, reference_of, prediction_file, answer_pattern, title, ceiling_of
        )
    return table, segments


def write_gaps(
    runs: pd.DataFrame,
    table: pd.DataFrame,
    segments: pd.DataFrame,
    out_dir: Path,
    grid_keys: list[str],
    reference_of: dict[str, str],
    prediction_file: str,
    answer_pattern: str,
    title: str = "",
    ceiling_of: Optional[dict[str, str]] = None,
) -> None:
    """gaps.csv/.md/.png, segment_gaps.csv/.md/.png and gap_heatmap.png (gaps.py) of the finished runs."""
    gaps = gap_table(runs, reference_of, prediction_file, answer_pattern, ceiling_of=ceiling_of)
    if gaps.empty:
        return
    gaps = gaps.join(table[[k for k in grid_keys if k in table]])
    gaps.to_csv(out_dir / "gaps.csv")
    (out_dir / "gaps.md").write_text(
        "Each point minus its reference, mean over the seeds both ran [95% bootstrap "
        "interval: seeds resampled, then the test records within each; paired]\n\n"
        f"{gaps_markdown(gaps)}\n"
    )
    methods = point_methods(runs)
    plot_gaps(gaps, methods, f"{title}, test split").savefig(out_dir / "gaps.png", dpi=120)
    keys = heatmap_keys(gaps, grid_keys)
    if keys:
        plot_heatmaps(gaps, *keys).savefig(out_dir / "gap_heatmap.png", dpi=120)
    if len(segments):
        by_window = segment_gaps(segments, reference_of)
        by_window.to_csv(out_dir / "segment_gaps.csv")
        (out_dir / "segment_gaps.md").write_text(
            "BLEU of each point minus its reference's per position window "
            f"(mean over seeds; blank: a window one of them does not reach)\n\n"
            f"{by_window.map(lambda v: '' if pd.isna(v) else f'{v:+.2f}').to_markdown(disable_numparse=True)}\n"
        )
        plot_segment_gaps(by_window, methods=methods, title=f"{title}, test split").savefig(
            out_dir / "segment_gaps.png", dpi=120
        )


def slug(label: str) -> str:
    """A label as one path component (a hub id's "/" would nest directories)."""
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", label)
