"""Gaps against a reference (a sweep's `reference: method=sft`): every other point's score minus its
reference's, with a 95% bootstrap interval over seeds and test records. Which point is whose reference
(and ceiling) is the sweep's business (sweep/spec.py); this module takes the runs and those mappings.

Paired: the seeds a point shares with its reference are paired run by run, and both runs of a pair
decoded the same test records, so one resample of the records scores both and the interval is that of
the difference (far tighter than two overlapping intervals). Hierarchical: each bootstrap replicate
draws the paired seeds with replacement, then for every seed drawn an independent resample of the
records, and averages those seeds' gaps, so the interval holds both the training noise (seeds) and
the test-set noise (records); with one seed it is the records' bootstrap. Every record resample is
drawn per (bootstrap seed, training seed), and the seed draws per set of seeds, so points that share
their seeds are scored on the same replicates: `<metric>_share` (a `ceiling`'s) is the point's gap over
the ceiling's gap replicate by replicate, e.g. the share of the SFT-to-oracle gap a method closes;
where the ceiling's own gap interval holds 0 there is no gap to close and no share (NaN).
Beside each gap: the point's own mean score over its paired seeds (`<metric>`) and its reference's
(`<metric>_reference`), each with its interval; `<metric>_seed_std` is the sample std of the per-seed
gaps. Empty predictions score 0 (eval.empty=keep). Cost is a ratio: `train_cost_x` = reference
tokens/s / the point's.
`window_gaps` is the records' paired bootstrap per position window (`flythinker table` prints both).
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
from .segments import TextUnits
from .palette import REFERENCE_COLOUR, line_styles

GAP_METRICS = ("bleu", "rouge1", "rougeL", "meteor", "answer_accuracy")
N_RESAMPLES = 1000
COST = "perf/train_tokens_per_s"


@lru_cache(maxsize=64)
def _sample_scores(predictions_path: str, answer_pattern: str = "") -> tuple[tuple, np.ndarray, dict[str, np.ndarray]]:
    """(ids, BLEU statistics per sample, per-sample ROUGE/METEOR and answer correctness) of one
    predictions file. Answer accuracy is over the rows whose reference has an answer: those rows'
    correctness, NaN elsewhere."""
    ids, predictions, references_ = zip(*read_predictions(predictions_path))
    stats, per_sample = _text_scores(predictions, references_)
    if answer_pattern:
        _, rows = answer_scores(predictions, references_, answer_pattern)
        if rows:
            correct, has_reference = rows["answer_accuracy"]
            per_sample["answer_accuracy"] = np.where(has_reference > 0, correct, np.nan)
    return ids, stats, per_sample


def _text_scores(predictions, references_) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(BLEU statistics per sample, per-sample ROUGE and METEOR) of texts."""
    per_sample = rouge_f(predictions, references_)
    if meteor_unavailable_reason() is None:
        per_sample["meteor"] = meteor(predictions, references_)
    return bleu_statistics(predictions, references_), per_sample


def _corpus_bleu(stats: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.array([bleu_from_statistics(stats[r].sum(0)) for r in rows])


def _row_scores(stats: np.ndarray, per_sample: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """Per metric: the score on each row set of `rows` (BLEU rescored as a corpus)."""
    return {
        "bleu": _corpus_bleu(stats, rows),
        **{name: np.nanmean(values[rows], 1) for name, values in per_sample.items()},
    }


def _scores(run_dir: str, rows: np.ndarray, prediction_file: str, answer_pattern: str) -> tuple[tuple, dict]:
    """(record ids, per metric: the run's score on each row set of `rows`)."""
    ids, stats, per_sample = _sample_scores(str(Path(run_dir) / prediction_file), answer_pattern)
    return ids, _row_scores(stats, per_sample, rows)


def _pair_scores(
    run_dir: str, other_dir: str, resamples: np.ndarray, prediction_file: str, answer_pattern: str
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per metric: (point's score, reference's) on the full set (index 0) then on every resample."""
    rows = np.vstack([np.arange(resamples.shape[1]), resamples])
    ids, mine = _scores(run_dir, rows, prediction_file, answer_pattern)
    other_ids, theirs = _scores(other_dir, rows, prediction_file, answer_pattern)
    if ids != other_ids:
        raise ValueError(
            f"{run_dir} and its reference {other_dir} decoded different records: a paired gap needs the same test set"
        )
    return {name: (mine[name], theirs[name]) for name in set(mine) & set(theirs)}


def _record_resamples(count: int, training_seed: int, seed: int) -> np.ndarray:
    """[N_RESAMPLES, count] record indices for one training seed's runs (every point's the same)."""
    return np.random.default_rng([seed, int(training_seed)]).integers(0, count, size=(N_RESAMPLES, count))


def _seed_draws(training_seeds: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """([N_RESAMPLES, n] which paired seed each slot of a replicate takes, [N_RESAMPLES, n] which of
    that seed's record resamples it uses): the same for every point paired over the same seeds."""
    rng = np.random.default_rng([seed, len(training_seeds), *map(int, training_seeds)])
    n = len(training_seeds)
    return rng.integers(0, n, size=(N_RESAMPLES, n)), rng.integers(0, N_RESAMPLES, size=(N_RESAMPLES, n))


def hierarchical(per_seed: list[np.ndarray], draws: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """[mean over seeds on the full sets, then one value per replicate]: `per_seed[i]` is seed i's value
    on its full set (index 0) then on each of its record resamples; a replicate averages the seeds its
    draw took, each on the record resample drawn for that slot."""
    values = np.stack(per_seed)  # [seeds, 1 + N_RESAMPLES]
    which_seed, which_resample = draws
    return np.concatenate([[values[:, 0].mean()], values[which_seed, 1 + which_resample].mean(1)])


def _interval(replicates: np.ndarray) -> tuple[float, float]:
    low, high = np.nanpercentile(replicates[1:], [2.5, 97.5])
    return float(low), float(high)


def _paired(runs: pd.DataFrame, point: str, reference: str) -> list[tuple[pd.Series, pd.Series]]:
    """(point's run, reference's run) per seed both ran; with no shared seed, their first runs."""
    mine, theirs = runs[runs["point"] == point], runs[runs["point"] == reference]
    pairs = [(mine_row, theirs[theirs["seed"] == mine_row["seed"]]) for _, mine_row in mine.iterrows()]
    return [(m, t.iloc[0]) for m, t in pairs if len(t)] or [(mine.iloc[0], theirs.iloc[0])]


def gap_table(
    runs: pd.DataFrame,
    reference_of: dict[str, str],
    prediction_file: str = "predictions.jsonl",
    answer_pattern: str = "",
    seed: int = 0,
    ceiling_of: Optional[dict[str, str]] = None,
) -> pd.DataFrame:
    """One row per point with a reference: `<metric>_gap`, its `_ci_low/_ci_high` (hierarchical bootstrap
    over seeds, then records), `_seed_std`; the point's own mean `<metric>` and its reference's
    `<metric>_reference`, each with `_low/_high`; where the point has a ceiling (`ceiling_of`) sharing its
    reference and seeds, `<metric>_share` of the ceiling's gap with `_low/_high`; `train_cost_x` and the
    seeds paired."""
    rows, replicates = [], {}
    for point, reference in reference_of.items():
        pairs = _paired(runs, point, reference)
        count = len(_sample_scores(str(Path(pairs[0][0]["run_dir"]) / prediction_file), answer_pattern)[0])
        per_seed = [
            _pair_scores(
                m["run_dir"], t["run_dir"], _record_resamples(count, m["seed"], seed), prediction_file, answer_pattern
            )
            for m, t in pairs
        ]
        seeds = [m["seed"] for m, _ in pairs]
        draws = _seed_draws(seeds, seed)
        row = {"point": point, "reference": reference, "seeds": ",".join(str(s) for s in seeds)}
        for metric in GAP_METRICS:
            if not all(metric in scores for scores in per_seed):
                continue
            gap = hierarchical([mine - theirs for mine, theirs in (s[metric] for s in per_seed)], draws)
            replicates[point, metric] = (reference, seeds, gap)
            seed_gaps = [s[metric][0][0] - s[metric][1][0] for s in per_seed]
            row.update(
                {
                    f"{metric}_gap": gap[0],
                    **dict(zip((f"{metric}_ci_low", f"{metric}_ci_high"), _interval(gap))),
                    f"{metric}_seed_std": np.std(seed_gaps, ddof=1) if len(seed_gaps) > 1 else np.nan,
                }
            )
            for side, column in ((0, metric), (1, f"{metric}_reference")):
                values = hierarchical([s[metric][side] for s in per_seed], draws)
                row.update({column: values[0], **dict(zip((f"{column}_low", f"{column}_high"), _interval(values)))})
        if COST in runs:
            row["train_cost_x"] = (
                runs.loc[runs["point"] == reference, COST].mean() / runs.loc[runs["point"] == point, COST].mean()
            )
        rows.append(row)
    for row in rows:
        ceiling = (ceiling_of or {}).get(row["point"])
        for metric in GAP_METRICS:
            mine, top = replicates.get((row["point"], metric)), replicates.get((ceiling, metric))
            if mine is None or top is None or mine[:2] != top[:2]:  # another reference or other seeds
                continue
            row["ceiling"] = ceiling
            low, high = _interval(top[2])
            if low <= 0 <= high:  # no measured gap to close: a share of it would be noise over noise
                row.update(dict.fromkeys((f"{metric}_share", f"{metric}_share_low", f"{metric}_share_high"), np.nan))
                continue
            with np.errstate(divide="ignore", invalid="ignore"):
                share = mine[2] / top[2]
            row.update(
                {
                    f"{metric}_share": share[0],
                    **dict(
                        zip(
                            (f"{metric}_share_low", f"{metric}_share_high"),
                            _interval(np.where(np.isfinite(share), share, np.nan)),
                        )
                    ),
                }
            )
    return pd.DataFrame(rows).set_index("point") if rows else pd.DataFrame()


def window_gaps(
    run_dir: str | Path,
    reference_dir: str | Path,
    windows: list[tuple[int, int]],
    units: TextUnits,
    prediction_file: str = "predictions.jsonl",
    seed: int = 0,
    min_count: int = 1,
    last: Optional[int] = None,
    training_seed: int = 0,
) -> pd.DataFrame:
    """gap_table's bootstrap of one pair of runs (the run's `training_seed`) per position window
    (segments.py's windows, cut in `units`): one row per window that at least `min_count` references
    reach (only the `last` such windows, if given), with `count` (the records whose reference reaches
    it: both runs are scored on those), `<metric>_gap` (run minus reference) and its 95% interval."""
    ids, predictions, references_ = zip(*read_predictions(Path(run_dir) / prediction_file))
    other_ids, other_predictions, _ = zip(*read_predictions(Path(reference_dir) / prediction_file))
    if ids != other_ids:
        raise ValueError(
            f"{run_dir} and its reference {reference_dir} decoded different records: a paired gap "
            "needs the same test set"
        )
    mine, theirs, referenced = (
        [units.split(text) for text in texts] for texts in (predictions, other_predictions, references_)
    )
    reaching_by_window = {
        (start, end): [i for i, reference in enumerate(referenced) if len(reference) > start] for start, end in windows
    }
    kept = [window for window, reaching in reaching_by_window.items() if len(reaching) >= min_count]
    rows, draws = [], _seed_draws([training_seed], seed)
    for start, end in kept[-last:] if last else kept:
        reaching = reaching_by_window[(start, end)]
        cut = [units.join(referenced[i][start:end]) for i in reaching]
        rows_ = np.vstack([np.arange(len(reaching)), _record_resamples(len(reaching), training_seed, seed)])
        run_scores, reference_scores = (
            _row_scores(*_text_scores([units.join(texts[i][start:end]) for i in reaching], cut), rows_)
            for texts in (mine, theirs)
        )
        gaps = {name: run_scores[name] - reference_scores[name] for name in set(run_scores) & set(reference_scores)}
        row = {"segment_start": start, "segment_end": end, "count": len(reaching)}
        for metric in (m for m in GAP_METRICS if m in gaps):
            gap = hierarchical([gaps[metric]], draws)
            row.update(
                {f"{metric}_gap": gap[0], **dict(zip((f"{metric}_ci_low", f"{metric}_ci_high"), _interval(gap)))}
            )
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(value: float, low: float, high: float, digits: int, sign: str = "+") -> str:
    return f"{value:{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def gaps_markdown(table: pd.DataFrame) -> str:
    """ "gap [low, high] sd s" per metric (BLEU 0-100, the others 0-1; sd: over seeds, where several were
    paired); for the headline metric (answer accuracy where scored, else BLEU) also the point's and its
    reference's own scores and, with a ceiling, the share of its gap; the training cost and the seeds."""
    cells = pd.DataFrame(index=table.index)
    cells["reference"] = table["reference"]
    metrics = [m for m in GAP_METRICS if f"{m}_gap" in table]
    headline = next((m for m in ("answer_accuracy", "bleu") if m in metrics), None)
    digits = {m: 2 if m == "bleu" else 3 for m in metrics}  # BLEU 0-100, the others 0-1
    if headline:
        for column, title in ((headline, headline), (f"{headline}_reference", f"reference {headline}")):
            cells[title] = [
                _cell(v, lo, hi, digits[headline], "")
                for v, lo, hi in table[[column, f"{column}_low", f"{column}_high"]].itertuples(index=False)
            ]
    for metric in metrics:
        columns = [f"{metric}_gap", f"{metric}_ci_low", f"{metric}_ci_high", f"{metric}_seed_std"]
        cells[f"{metric} gap"] = [
            _cell(g, lo, hi, digits[metric]) + ("" if pd.isna(sd) else f" sd {sd:.{digits[metric]}f}")
            for g, lo, hi, sd in table[columns].itertuples(index=False)
        ]
    if headline and f"{headline}_share" in table:
        cells[f"share of the ceiling's {headline} gap"] = [
            ""
            if pd.isna(ceiling)
            else f"no gap to {ceiling}"
            if pd.isna(v)
            else f"{_cell(v, lo, hi, 2, '')} of {ceiling}"
            for v, lo, hi, ceiling in table[
                [f"{headline}_share", f"{headline}_share_low", f"{headline}_share_high", "ceiling"]
            ].itertuples(index=False)
        ]
    if "train_cost_x" in table:
        cells["train cost (x reference)"] = table["train_cost_x"].map(lambda x: f"{x:.2f}" if pd.notna(x) else "")
    cells["seeds"] = table["seeds"]
    return cells.to_markdown()


def segment_gaps(segments: pd.DataFrame, reference_of: dict[str, str], metric: str = "bleu") -> pd.DataFrame:
    """Per position window (rows), each point's `metric` minus its reference's (mean over seeds)."""
    columns = {
        point: segments[f"{metric} ({point})"] - segments[f"{metric} ({reference})"]
        for point, reference in reference_of.items()
        if f"{metric} ({point})" in segments and f"{metric} ({reference})" in segments
    }
    return pd.DataFrame(columns, index=segments.index)


def plot_gaps(table: pd.DataFrame, methods: Optional[dict[str, str]] = None, title: str = "") -> Figure:
    """Every quality gap per point with its paired 95% interval, and the zero line; each point in
    its method's colour (`methods`: point -> method)."""
    metrics = [m for m in GAP_METRICS if f"{m}_gap" in table]
    columns, rows = min(2, len(metrics)), -(-len(metrics) // 2)
    figure = Figure(figsize=(max(3.2, 0.5 * len(table) + 1.8) * columns, 4.2 * rows), layout="constrained")
    ticks = [f"{point} - {reference}" for point, reference in zip(table.index, table["reference"])]
    styles = line_styles((methods or {}).get(point) for point in table.index)
    for metric, axis in zip(metrics, figure.subplots(rows, columns, squeeze=False).ravel()):
        gap = table[f"{metric}_gap"]
        error = [gap - table[f"{metric}_ci_low"], table[f"{metric}_ci_high"] - gap]
        for x, style in enumerate(styles):
            axis.errorbar(
                [x],
                gap.iloc[[x]],
                yerr=[[error[0].iloc[x]], [error[1].iloc[x]]],
                fmt=style["marker"],
                color=style["color"],
                capsize=3,
            )
        axis.axhline(0, color=REFERENCE_COLOUR, linestyle="--", linewidth=1)
        axis.set_xticks(range(len(table)), ticks, rotation=35, ha="right", fontsize=8)
        axis.set(title=f"{metric} gap", ylabel=f"{metric} difference" + (" (0-100)" if metric == "bleu" else ""))
        axis.grid(alpha=0.3)
    note = "point minus its reference: 95% bootstrap (seeds, then test records; paired)"
    figure.suptitle(f"{title}\n{note}" if title else note, fontsize=9)
    return figure


def plot_segment_gaps(
    gaps: pd.DataFrame, metric: str = "bleu", methods: Optional[dict[str, str]] = None, title: str = ""
) -> Figure:
    """The gap per position window, one line per point in its method's colour."""
    figure = Figure(figsize=(6, 4.2), layout="constrained")
    axis = figure.subplots()
    for point, style in zip(gaps, line_styles((methods or {}).get(point) for point in gaps)):
        axis.plot(range(len(gaps)), gaps[point], label=point, **style)
    axis.axhline(0, color=REFERENCE_COLOUR, linestyle="--", linewidth=1)
    axis.set_xticks(range(len(gaps)), gaps.index, rotation=35, ha="right", fontsize=8)
    axis.set(
        title=f"{metric} gap vs the reference per position window",
        xlabel="position in output (words)",
        ylabel=f"{metric} difference",
    )
    if title:
        figure.suptitle(title, fontsize=9)
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
                axis.text(
                    j,
                    i,
                    f"{value:+.2f}" if column == "bleu_gap" else f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=9,
                )
        axis.set_xticks(range(grid.shape[1]), grid.columns)
        axis.set_yticks(range(grid.shape[0]), grid.index)
        axis.set(title=title, xlabel=columns_key, ylabel=rows_key)
        figure.colorbar(image, ax=axis, shrink=0.8)
    return figure
