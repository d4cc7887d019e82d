"""Gaps against a reference (a sweep's `reference: method=sft`): every other point's score minus its
reference's, with a 95% paired bootstrap interval over the test records. Which point is whose reference
is the sweep's business (sweep/spec.py); this module takes the runs and that mapping.

Paired: both runs decoded the same test records, so one resample of the records scores both, and
the interval is that of the difference (far tighter than two overlapping intervals). With several
seeds, the seeds a point shares with its reference are paired run by run and their gaps averaged on
the same resamples; `<metric>_seed_std` is the sample std of the per-seed gaps. Empty predictions
score 0 (eval.empty=keep). Cost is a ratio: `train_cost_x` = reference tokens/s / the point's.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .metrics import answer_scores, bleu_from_statistics, bleu_statistics, meteor, meteor_unavailable_reason, rouge_f
from ..evaluation.predictions import read_predictions

GAP_METRICS = ("bleu", "rouge1", "rougeL", "meteor", "answer_accuracy")
N_RESAMPLES = 1000
COST = "perf/train_tokens_per_s"


@lru_cache(maxsize=64)
def _sample_scores(predictions_path: str, answer_pattern: str = "") -> tuple[tuple, np.ndarray, dict[str, np.ndarray]]:
    """(ids, BLEU statistics per sample, per-sample ROUGE/METEOR and answer correctness) of one
    predictions file. Answer accuracy is over the rows whose reference has an answer: those rows'
    correctness, NaN elsewhere."""
    ids, predictions, references_ = zip(*read_predictions(predictions_path))
    per_sample = rouge_f(predictions, references_)
    if meteor_unavailable_reason() is None:
        per_sample["meteor"] = meteor(predictions, references_)
    if answer_pattern:
        _, rows = answer_scores(predictions, references_, answer_pattern)
        if rows:
            correct, has_reference = rows["answer_accuracy"]
            per_sample["answer_accuracy"] = np.where(has_reference > 0, correct, np.nan)
    return ids, bleu_statistics(predictions, references_), per_sample


def _corpus_bleu(stats: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.array([bleu_from_statistics(stats[r].sum(0)) for r in rows])


def _replicates(run_dir: str, other_dir: str, resamples: np.ndarray, prediction_file: str,
                answer_pattern: str) -> dict[str, np.ndarray]:
    """Per metric: [point's score - reference's] on the full set (index 0) then on every resample."""
    ids, stats, per_sample = _sample_scores(str(Path(run_dir) / prediction_file), answer_pattern)
    other_ids, other_stats, other_per_sample = _sample_scores(str(Path(other_dir) / prediction_file), answer_pattern)
    if ids != other_ids:
        raise ValueError(f"{run_dir} and its reference {other_dir} decoded different records: a paired gap "
                         "needs the same test set")
    rows = np.vstack([np.arange(len(ids)), resamples])
    gaps = {"bleu": _corpus_bleu(stats, rows) - _corpus_bleu(other_stats, rows)}
    for name in set(per_sample) & set(other_per_sample):
        gaps[name] = np.nanmean(per_sample[name][rows], 1) - np.nanmean(other_per_sample[name][rows], 1)
    return gaps


def gap_table(runs: pd.DataFrame, reference_of: dict[str, str], prediction_file: str = "predictions.jsonl",
              answer_pattern: str = "", seed: int = 0) -> pd.DataFrame:
    """One row per point with a reference: `<metric>_gap`, its `_ci_low/_ci_high`, `_seed_std`,
    `train_cost_x` and the seeds paired."""
    rows = []
    for point, reference in reference_of.items():
        mine, theirs = runs[runs["point"] == point], runs[runs["point"] == reference]
        pairs = [(mine_row, theirs[theirs["seed"] == mine_row["seed"]]) for _, mine_row in mine.iterrows()]
        pairs = [(m, t.iloc[0]) for m, t in pairs if len(t)] or [
            (m, t) for m in [mine.iloc[0]] for t in [theirs.iloc[0]]]  # no shared seed: first runs
        count = len(_sample_scores(str(Path(pairs[0][0]["run_dir"]) / prediction_file), answer_pattern)[0])
        resamples = np.random.default_rng(seed).integers(0, count, size=(N_RESAMPLES, count))
        per_seed = [_replicates(m["run_dir"], t["run_dir"], resamples, prediction_file, answer_pattern)
                    for m, t in pairs]
        row = {"point": point, "reference": reference, "seeds": ",".join(str(m["seed"]) for m, _ in pairs)}
        for metric in GAP_METRICS:
            if not all(metric in gaps for gaps in per_seed):
                continue
            mean = np.mean([gaps[metric] for gaps in per_seed], axis=0)
            low, high = np.percentile(mean[1:], [2.5, 97.5])
            seed_gaps = [gaps[metric][0] for gaps in per_seed]
            row.update({f"{metric}_gap": mean[0], f"{metric}_ci_low": low, f"{metric}_ci_high": high,
                        f"{metric}_seed_std": np.std(seed_gaps, ddof=1) if len(seed_gaps) > 1 else np.nan})
        if COST in runs:
            row["train_cost_x"] = theirs[COST].mean() / mine[COST].mean()
        rows.append(row)
    return pd.DataFrame(rows).set_index("point") if rows else pd.DataFrame()


def gaps_markdown(table: pd.DataFrame) -> str:
    """"gap [low, high] sd s" per metric (BLEU 0-100, the others 0-1; sd: over seeds, where several were
    paired), the training cost and the seeds."""
    cells = pd.DataFrame(index=table.index)
    cells["reference"] = table["reference"]
    for metric in (m for m in GAP_METRICS if f"{m}_gap" in table):
        digits = 2 if metric == "bleu" else 3  # BLEU 0-100, the others 0-1
        columns = [f"{metric}_gap", f"{metric}_ci_low", f"{metric}_ci_high", f"{metric}_seed_std"]
        cells[f"{metric} gap"] = [f"{g:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"
                                  + ("" if pd.isna(sd) else f" sd {sd:.{digits}f}")
                                  for g, lo, hi, sd in table[columns].itertuples(index=False)]
    if "train_cost_x" in table:
        cells["train cost (x reference)"] = table["train_cost_x"].map(lambda x: f"{x:.2f}" if pd.notna(x) else "")
    cells["seeds"] = table["seeds"]
    return cells.to_markdown()


def segment_gaps(segments: pd.DataFrame, reference_of: dict[str, str], metric: str = "bleu") -> pd.DataFrame:
    """Per position window (rows), each point's `metric` minus its reference's (mean over seeds)."""
    columns = {point: segments[f"{metric} ({point})"] - segments[f"{metric} ({reference})"]
               for point, reference in reference_of.items()
               if f"{metric} ({point})" in segments and f"{metric} ({reference})" in segments}
    return pd.DataFrame(columns, index=segments.index)


def plot_gaps(table: pd.DataFrame) -> Figure:
    """Every quality gap per point with its paired 95% interval, and the zero line."""
    metrics = [m for m in GAP_METRICS if f"{m}_gap" in table]
    columns, rows = min(2, len(metrics)), -(-len(metrics) // 2)
    figure = Figure(figsize=(max(3.2, 0.5 * len(table) + 1.8) * columns, 4.2 * rows), layout="constrained")
    ticks = [f"{point} - {reference}" for point, reference in zip(table.index, table["reference"])]
    for metric, axis in zip(metrics, figure.subplots(rows, columns, squeeze=False).ravel()):
        gap = table[f"{metric}_gap"]
        error = [gap - table[f"{metric}_ci_low"], table[f"{metric}_ci_high"] - gap]
        axis.errorbar(range(len(table)), gap, yerr=error, fmt="o", capsize=3)
        axis.axhline(0, color="grey", linestyle="--", linewidth=1)
        axis.set_xticks(range(len(table)), ticks, rotation=35, ha="right", fontsize=8)
        axis.set(title=f"{metric} gap", ylabel=f"{metric} difference" + (" (0-100)" if metric == "bleu" else ""))
        axis.grid(alpha=0.3)
    figure.suptitle("point minus its reference: paired 95% bootstrap over test records", fontsize=9)
    return figure


def plot_segment_gaps(gaps: pd.DataFrame, metric: str = "bleu") -> Figure:
    """The gap per position window, one line per point."""
    figure = Figure(figsize=(6, 3.8), layout="constrained")
    axis = figure.subplots()
    for point in gaps:
        axis.plot(range(len(gaps)), gaps[point], marker="o", label=point)
    axis.axhline(0, color="grey", linestyle="--", linewidth=1)
    axis.set_xticks(range(len(gaps)), gaps.index, rotation=35, ha="right", fontsize=8)
    axis.set(title=f"{metric} gap vs the reference per position window", xlabel="position in output (words)",
             ylabel=f"{metric} difference")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    return figure


def heatmap_keys(table: pd.DataFrame, keys: list[str]) -> Optional[tuple[str, str]]:
    """The two grid keys the gapped points vary over, if exactly two do."""
    varying = [k for k in keys if k in table and table[k].nunique(dropna=True) > 1]
    return (varying[0], varying[1]) if len(varying) == 2 else None


def plot_heatmaps(table: pd.DataFrame, rows_key: str, columns_key: str) -> Figure:
    """The BLEU gap and the training cost ratio over two grid keys, each cell annotated."""
    panels = [("bleu_gap", "BLEU gap vs reference (0-100)"), ("train_cost_x", "training cost (x reference)")]
    panels = [(column, title) for column, title in panels if column in table]
    figure = Figure(figsize=(4.6 * len(panels), 3.8), layout="constrained")
    for (column, title), axis in zip(panels, figure.subplots(1, len(panels), squeeze=False).ravel()):
        grid = table.pivot_table(index=rows_key, columns=columns_key, values=column, aggfunc="mean")
        image = axis.imshow(grid.to_numpy(dtype=float), cmap="RdBu" if column == "bleu_gap" else "viridis")
        if column == "bleu_gap":
            limit = np.nanmax(np.abs(grid.to_numpy(dtype=float))) or 1.0
            image.set_clim(-limit, limit)
        for (i, j), value in np.ndenumerate(grid.to_numpy(dtype=float)):
            if np.isfinite(value):
                axis.text(j, i, f"{value:+.2f}" if column == "bleu_gap" else f"{value:.2f}", ha="center",
                          va="center", fontsize=9)
        axis.set_xticks(range(grid.shape[1]), grid.columns)
        axis.set_yticks(range(grid.shape[0]), grid.index)
        axis.set(title=title, xlabel=columns_key, ylabel=rows_key)
        figure.colorbar(image, ax=axis, shrink=0.8)
    return figure
