"""Sweeps: one YAML file runs an ablation -- every point x seed through `run_experiment` -- and
aggregates the finished runs into tables (mean and std over seeds) and plots.

A sweep file (ablations/<name>.yaml)::

    name: lambda                     # default: the file's stem; names the results and run dirs
    base: ../experiments/demo.yaml   # the config every point starts from (relative to this file)
    overrides: [trainer.max_steps=100]   # dotlist applied to every point
    seeds: [0, 1]                    # every point runs once per seed (sets `seed`); default: the base's seed
    grid:                            # cartesian product of the keys: one point per combination,
      fusion.lam: [0, 0.5, 1]        #   labelled "fusion.lam=0.5" ("k1=a,k2=b" for several keys)
    points:                          # extra points, e.g. references, also run once per seed
      - {label: sft, overrides: [method=sft]}
      - {label: cot, config: ../experiments/product_review/cot.yaml, seeds: [0]}   # own config / seeds
    reference: method=sft            # optional: gaps of every other point vs its reference (lit/gaps.py);
                                     #   a label (reference: sft) is everyone's reference

A run's config is base <- `overrides` <- the point's settings <- `seed`, in experiment
`ablation_<name>/<label>,seed=<seed>` (so runs land in <logging.root_dir>/ablation_<name>/...).
A point of `points` that sets a grid key (fusion.lam=0.5) joins the grid's plots at that value.
Because every run is `run_experiment` under its own experiment name, rerunning an interrupted
sweep skips finished runs and resumes a half-trained one from its last.ckpt.

Results (default <this file's dir>/results/<name>/): table.csv/.md (one row per point: mean and
sample std over seeds of SUMMARY_METRICS and any lambda_sweep/ columns, n_seeds), runs.csv (one
row per run), segments.csv/.md (position windows, mean over seeds), position_eval.png (one line
per point), metrics.png (every metric per point), metrics_vs_<key>.png for every numeric grid key and
lambda_sweep.png (val/loss vs inference-time lambda) where runs logged it. With `reference`:
gaps.csv/.md + gaps.png (each point minus its reference, paired 95% bootstrap intervals, training
cost ratio), segment_gaps.csv/.md + .png (BLEU gap per position window) and, when the points vary
over two grid keys, gap_heatmap.png.
"""
from __future__ import annotations

import gc
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.figure import Figure
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import Config, ConfigError, load_config
from ..evaluation.metrics import METRICS
from ..evaluation.report import CSV_NAME, METRIC_LABELS, PNG_NAME, plot_position_eval, segment_table
from .evaluate import EVAL_CONFIG, eval_yaml
from .gaps import (gap_table, gaps_markdown, heatmap_keys, plot_gaps, plot_heatmaps, plot_segment_gaps,
                   references, segment_gaps)
from .launch import external_launch
from .run import NOT_DECODING, choose_run_dir, finished_run, run_experiment, same_settings

SWEEP_KEYS = ("name", "base", "overrides", "seeds", "grid", "points", "reference")
POINT_KEYS = ("label", "overrides", "config", "seeds")
OWNED_KEYS = ("seed", "logging.experiment")  # set per run by the sweep itself
SUMMARY_METRICS = ["val/loss", "test/bleu", "test/rouge1", "test/rougeL", "test/meteor", "test/answer_accuracy",
                   "perf/train_tokens_per_s", "perf/peak_memory_mb", "decode/ms_per_token",
                   "decode/seconds_per_sample"]
LAMBDA_SWEEP = "lambda_sweep/val_loss@"  # + inference-time lambda, logged by the lambda-sweep callback
UNITS = {"val/loss": "nats/token", "perf/train_tokens_per_s": "tokens/s", "perf/peak_memory_mb": "MiB",
         "decode/ms_per_token": "ms/token", "decode/seconds_per_sample": "s/sample"}
SPREAD_NOTE = "mean ± sample std over seeds (no bar: one seed)"


class SweepError(ConfigError):
    pass


@dataclass
class Point:
    label: str
    overrides: tuple[str, ...]
    settings: dict = field(default_factory=dict)  # grid key -> value, for the plots
    config: Optional[Path] = None  # a config file of its own instead of the sweep's base
    seeds: Optional[list[int]] = None  # instead of the sweep's seeds


@dataclass
class Run:
    point: Point
    seed: int
    config: Config


@dataclass
class Sweep:
    path: Path
    name: str
    grid_keys: list[str]
    points: list[Point]
    runs: list[Run]  # point-major: every seed of the first point, then of the next
    reference: dict[str, str] = field(default_factory=dict)  # point label -> its reference's label

    @property
    def results_dir(self) -> Path:
        return self.path.parent / "results" / self.name


def _dotlist_value(value: Any) -> str:
    """A YAML value as the text after `key=` in a dotlist override."""
    return value if isinstance(value, str) else json.dumps(value)


def _slug(label: str) -> str:
    """A label as one path component (a hub id's "/" would nest directories)."""
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", label)


def _override_key(override: Any, where: str) -> str:
    if not isinstance(override, str) or "=" not in override:
        raise SweepError(f"{where}: {override!r} is not a dotlist override (key=value)")
    key = override.split("=", 1)[0].strip()
    if key in OWNED_KEYS:
        raise SweepError(f"{where}: '{key}' is set by the sweep itself (use `seeds:`; runs are named after the points)")
    return key


def _overrides(node: Any, where: str) -> tuple[str, ...]:
    if node is None:
        return ()
    if not isinstance(node, list):
        raise SweepError(f"{where}: expected a list of key=value strings, got {node!r}")
    for override in node:
        _override_key(override, where)
    return tuple(node)


def _grid_points(path: Path, grid: Any) -> list[Point]:
    if grid is None:
        return []
    if not isinstance(grid, dict) or not grid:
        raise SweepError(f"{path}: 'grid' must map config keys to lists of values (got {grid!r})")
    for key, values in grid.items():
        _override_key(f"{key}=", f"{path}: grid")
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: grid key '{key}' needs a non-empty list of values (got {values!r})")
    points = []
    for combination in itertools.product(*grid.values()):
        settings = dict(zip(grid, combination))
        overrides = tuple(f"{key}={_dotlist_value(value)}" for key, value in settings.items())
        points.append(Point(",".join(overrides), overrides, settings))
    return points


def _extra_points(path: Path, points: Any, grid_keys: list[str]) -> list[Point]:
    if points is None:
        return []
    if not isinstance(points, list):
        raise SweepError(f"{path}: 'points' must be a list of {{label, overrides}} (got {points!r})")
    extra = []
    for index, point in enumerate(points):
        where = f"{path}: points[{index}]"
        if not isinstance(point, dict) or "label" not in point:
            raise SweepError(f"{where}: needs a `label` and `overrides` (got {point!r})")
        unknown = sorted(set(point) - set(POINT_KEYS))
        if unknown:
            raise SweepError(f"{where}: unknown key '{unknown[0]}'; valid keys: {', '.join(POINT_KEYS)}")
        overrides = _overrides(point.get("overrides"), where)
        dotlist = OmegaConf.from_dotlist(list(overrides))
        settings = {key: value for key in grid_keys if (value := OmegaConf.select(dotlist, key)) is not None}
        config = path.parent / str(point["config"]) if point.get("config") else None
        if config is not None and not config.is_file():
            raise SweepError(f"{where}: config: no such config file {config}")
        extra.append(Point(str(point["label"]), overrides, settings, config, _seeds(path, point.get("seeds"))))
    return extra


def _seeds(path: Path, seeds: Any) -> Optional[list[int]]:
    if seeds is None:
        return None
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise SweepError(f"{path}: 'seeds' must be a non-empty list of integers (got {seeds!r})")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"{path}: 'seeds' repeats a seed: {seeds}")
    return seeds


def load_sweep(path: str | Path, extra_overrides: list[str] = ()) -> Sweep:
    """Read and validate a sweep file; every run's config is loaded (and so validated) here,
    before anything runs. `extra_overrides` apply to every point after the file's `overrides`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such sweep file")
    try:
        node = OmegaConf.to_container(OmegaConf.load(path))
    except (OmegaConfBaseException, ValueError) as err:
        raise SweepError(f"{path}: not a valid YAML mapping: {err}") from None
    if not isinstance(node, dict):
        raise SweepError(f"{path}: a sweep file is a mapping with keys {', '.join(SWEEP_KEYS)}")
    unknown = sorted(set(node) - set(SWEEP_KEYS))
    if unknown:
        raise SweepError(f"{path}: unknown key '{unknown[0]}'; valid keys: {', '.join(SWEEP_KEYS)}")
    name = str(node.get("name") or path.stem)
    if _slug(name) != name:
        raise SweepError(f"{path}: name {name!r} must be usable as a directory name (letters, digits, ._=,+-)")
    if not node.get("base"):
        raise SweepError(f"{path}: 'base' (the experiment config every point starts from) is required")
    base = path.parent / str(node["base"])
    if not base.is_file():
        raise SweepError(f"{path}: base: no such config file {base}")
    shared = list(_overrides(node.get("overrides"), f"{path}: overrides"))
    base_seed = _load(path, base, shared, "overrides").seed
    shared += _overrides(list(extra_overrides), "command-line override")
    _load(path, base, shared, "command-line override")
    grid = node.get("grid")
    points = _grid_points(path, grid) + _extra_points(path, node.get("points"), list(grid or {}))
    if not points:
        raise SweepError(f"{path}: nothing to run: give a non-empty 'grid' and/or 'points'")
    labels = [point.label for point in points]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise SweepError(f"{path}: point label '{repeated[0]}' is used twice")
    seeds = _seeds(path, node.get("seeds")) or [base_seed]
    runs = [Run(point, seed, _load(path, point.config or base,
                                   [*shared, *point.overrides, f"seed={seed}",
                                    f"logging.experiment=ablation_{name}/{_slug(point.label)},seed={seed}"],
                                   f"point '{point.label}'"))
            for point in points for seed in point.seeds or seeds]
    return Sweep(path, name, list(grid or {}), points, runs, _references(path, node.get("reference"), runs))


def _references(path: Path, reference: Any, runs: list[Run]) -> dict[str, str]:
    """{point: its reference point} for the sweep's `reference`: a point's label (everyone's reference)
    or `key=value` (per point, lit/gaps.py)."""
    if reference is None:
        return {}
    labels = list(dict.fromkeys(run.point.label for run in runs))
    if isinstance(reference, str) and "=" not in reference:
        if reference not in labels:
            raise SweepError(f"{path}: reference: no point is labelled {reference!r} (points: {', '.join(labels)})")
        return {label: reference for label in labels if label != reference}
    key = _override_key(reference, f"{path}: reference")
    value = OmegaConf.select(OmegaConf.from_dotlist([reference]), key)
    configs = {run.point.label: OmegaConf.structured(run.config) for run in runs}
    if not any(OmegaConf.select(node, key) == value for node in configs.values()):
        raise SweepError(f"{path}: reference: no point has {reference}")
    return references(configs, {run.point.label: run.point.settings for run in runs}, key, value)


def _load(path: Path, base: Path, overrides: list[str], where: str) -> Config:
    try:
        return load_config(base, overrides)
    except ConfigError as err:
        raise SweepError(f"{path}: {where}: {str(err).removeprefix('command-line override: ')}") from None


def _decoded_and_scored(run_dir: Path, cfg: Config) -> bool:
    predictions, scored = run_dir / cfg.decode.output, run_dir / EVAL_CONFIG
    return (predictions.exists() and same_settings(predictions.with_suffix(".config.yaml"), cfg, NOT_DECODING)
            and scored.exists() and scored.read_text() == eval_yaml(cfg.eval))


def completed_run(cfg: Config) -> Optional[Path]:
    """The run dir holding this config's training, decoding and scores, or None."""
    run_dir = finished_run(cfg)
    return run_dir if run_dir is not None and _decoded_and_scored(run_dir, cfg) else None


def status(cfg: Config) -> str:
    """What running this config would do: reuse a finished run, resume one, or start fresh."""
    run_dir = finished_run(cfg)
    if run_dir is not None:
        return "done" if _decoded_and_scored(run_dir, cfg) else "trained (decode + score left)"
    _, resume_from = choose_run_dir(cfg)
    return f"resumes from {resume_from}" if resume_from else "new"


def plan(sweep: Sweep) -> pd.DataFrame:
    """One row per run: point, seed, experiment, what running it would do."""
    return pd.DataFrame([{"point": run.point.label, "seed": run.seed, "experiment": run.config.logging.experiment,
                          "status": status(run.config)} for run in sweep.runs],
                        index=pd.RangeIndex(1, len(sweep.runs) + 1, name="#"))


def processes(cfg: Config) -> int:
    """How many processes (ranks) a run of `cfg` uses: devices per node, as Lightning counts them, x nodes."""
    devices = cfg.trainer.devices
    if devices in ("auto", -1, "-1"):
        on_gpu = cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        devices = torch.cuda.device_count() if on_gpu else 1
    elif isinstance(devices, str) and "," in devices:  # "0,1": device indices
        devices = len([index for index in devices.split(",") if index.strip()])
    elif isinstance(devices, (list, tuple)):  # [0, 1]: device indices
        devices = len(devices)
    return int(devices) * cfg.trainer.num_nodes


def run_sweep(sweep: Sweep, out_dir: Optional[str | Path] = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every point x seed in order (finished runs are reused), then `aggregate` into `out_dir`.
    Multi-process points need an external launcher (torchrun, srun): every rank runs the sweep,
    global rank 0 chooses each run dir for all and writes the results."""
    several = next((run for run in sweep.runs if processes(run.config) > 1), None)
    if several is not None and external_launch() is None:
        raise SweepError(
            f"{sweep.path}: point '{several.point.label}' runs on {processes(several.config)} processes, and a "
            "sweep runs many Trainers in one command: Lightning's own launcher would restart the command in "
            "each rank and could not keep their run dirs in step. Launch the sweep with torchrun or srun, e.g. "
            f"COMMAND=sweep experiments/slurm/torchrun.sh {sweep.path}")
    for number, run in enumerate(sweep.runs, 1):
        print(f"[{number}/{len(sweep.runs)}] {run.point.label} seed={run.seed}: {status(run.config)}", flush=True)
        run_experiment(run.config)
        gc.collect()  # the finished point's models are garbage now: free their (GPU) memory before the next
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if rank_zero_only.rank != 0:  # every rank ran the sweep; rank 0 alone writes the results
        return pd.DataFrame(), pd.DataFrame()
    return aggregate(sweep, out_dir)


def runs_frame(sweep: Sweep) -> pd.DataFrame:
    """One row per finished run: point, seed, grid settings, run dir and every metrics.json key.
    Runs not finished yet are left out (`plan` lists them)."""
    rows = []
    for run in sweep.runs:
        run_dir = completed_run(run.config)
        if run_dir is not None:
            metrics = json.loads((run_dir / "metrics.json").read_text())
            rows.append({"point": run.point.label, "seed": run.seed, **run.point.settings,
                         "run_dir": str(run_dir), **metrics})
    if not rows:
        raise FileNotFoundError(f"{sweep.path}: no finished runs yet (run `flythinker sweep {sweep.path}`)")
    return pd.DataFrame(rows)


def swept_lambdas(columns) -> dict[str, float]:
    """The lambda_sweep/val_loss@<lam> columns among `columns`, by lambda: {column: lam}."""
    found = {c: re.fullmatch(re.escape(LAMBDA_SWEEP) + r"([0-9.e+-]+)", c) for c in columns}
    return dict(sorted(((c, float(m[1])) for c, m in found.items() if m), key=lambda item: item[1]))


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """SUMMARY_METRICS present in the runs, then lambda_sweep/ columns by lambda."""
    return [c for c in SUMMARY_METRICS if c in runs] + list(swept_lambdas(runs))


def summary_table(runs: pd.DataFrame, grid_keys: list[str] = ()) -> pd.DataFrame:
    """One row per point (in sweep order): its grid settings, then mean and `<metric>_std`
    (sample std, ddof=1; empty for one seed) over seeds of every metric column, and n_seeds."""
    metrics = metric_columns(runs)
    grouped = runs.groupby("point", sort=False)
    mean, std = grouped[metrics].mean(), grouped[metrics].std()
    table = grouped[[key for key in grid_keys if key in runs]].first()
    for metric in metrics:
        table[metric], table[f"{metric}_std"] = mean[metric], std[metric]
    table["n_seeds"] = grouped.size()
    return table


def markdown(table: pd.DataFrame) -> str:
    """The summary as markdown: "mean ± std" per metric, grid settings left out (they are the labels)."""
    cells = pd.DataFrame(index=table.index)
    for metric in (c for c in table if f"{c}_std" in table):
        cells[metric] = ["" if pd.isna(m) else f"{m:.4g}" if pd.isna(s) else f"{m:.4g} ± {s:.2g}"
                         for m, s in zip(table[metric], table[f"{metric}_std"])]
    cells["n_seeds"] = table["n_seeds"]
    return cells.to_markdown()


def segments_markdown(segments: pd.DataFrame) -> str:
    """The segment table as one markdown table per metric (rows: windows, columns: points)."""
    blocks = []
    for metric in [*METRICS, "count"]:
        columns = [c for c in segments if c.startswith(f"{metric} (")]
        if columns:
            block = segments[columns].rename(columns=lambda c: c[len(metric) + 2:-1])
            blocks.append(f"{metric}:\n\n{block.to_markdown(floatfmt='.4g')}")
    return "\n\n".join(blocks)


def segments_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Position-window scores per point, mean over its seeds, in report.plot_position_eval's layout:
    the point in `run`, the plots' line label in `label` ("<point>, seed 0" or "<point>, mean of 2 seeds")."""
    frames = [pd.read_csv(Path(run_dir) / CSV_NAME).assign(run=point, seed=seed)
              for point, seed, run_dir in zip(runs["point"], runs["seed"], runs["run_dir"])
              if (Path(run_dir) / CSV_NAME).exists()]
    if not frames:
        return pd.DataFrame()
    frame = pd.concat(frames)
    seeds = frame.groupby("run", sort=False)["seed"].unique()
    keys = ["run", "segment_start", "segment_end", "metric", *(["unit"] if "unit" in frame else [])]
    frame = frame.groupby(keys, sort=False, as_index=False, dropna=False)[["value", "count"]].mean()
    labels = {point: f"{point}, seed {s[0]}" if len(s) == 1 else f"{point}, mean of {len(s)} seeds"
              for point, s in seeds.items()}
    return frame.assign(label=frame["run"].map(labels))


def metric_label(metric: str) -> str:
    """An axis label with the metric's scale or unit: "test BLEU (0-100)", "val/loss (nats/token)"."""
    split, _, name = metric.rpartition("/")
    if name in METRIC_LABELS:
        return f"{split} {METRIC_LABELS[name]}"
    return f"{metric} ({UNITS[metric]})" if metric in UNITS else metric


def _errorbar(axis, x, table: pd.DataFrame, metric: str, **style) -> None:
    """Mean with its sample std over seeds; a point of one seed has no std and so no bar."""
    axis.errorbar(x, table[metric], yerr=table[f"{metric}_std"], capsize=3, **style)


def _metric_axes(table: pd.DataFrame, width: float, height: float = 3.4) -> tuple[Figure, list]:
    """A figure and its (metric, axis) panels, one per summary metric in the table, four to a row."""
    metrics = [m for m in SUMMARY_METRICS if m in table]
    rows, columns = -(-len(metrics) // 4), min(4, len(metrics))
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis in axes[len(metrics):]:
        axis.set_visible(False)
    return figure, list(zip(metrics, axes))


def plot_metrics(table: pd.DataFrame) -> Figure:
    """Every summary metric per point (mean, std over seeds as error bars); ticks "<point> (n=<seeds>)"."""
    figure, panels = _metric_axes(table, max(3.2, 0.5 * len(table) + 1.5), 3.8)
    ticks = [f"{point} (n={n})" for point, n in zip(table.index, table["n_seeds"])]
    for metric, axis in panels:
        _errorbar(axis, range(len(table)), table, metric, fmt="o")
        axis.set_xticks(range(len(table)), ticks, rotation=35, ha="right", fontsize=8)
        axis.set(title=metric, ylabel=metric_label(metric))
        axis.grid(alpha=0.3)
    figure.suptitle(SPREAD_NOTE, fontsize=9)
    return figure


def plot_versus(table: pd.DataFrame, key: str, grid_keys: list[str]) -> Figure:
    """Every summary metric against one numeric grid key: a line per combination of the other grid
    keys, std error bars; points without the key (references such as SFT) as dashed lines with
    their std as a band."""
    others = [k for k in grid_keys if k != key]
    on_axis, references = table[table[key].notna()], table[table[key].isna()]
    lines = on_axis.groupby(others, sort=False, dropna=False) if others else [((), on_axis)]
    figure, panels = _metric_axes(table, 3.6)
    for metric, axis in panels:
        for name, rows in lines:
            label = ",".join(f"{k}={v}" for k, v in zip(others, name if isinstance(name, tuple) else [name]))
            rows = rows.sort_values(key)
            _errorbar(axis, rows[key].astype(float), rows, metric, marker="o", label=label or None)
        for (label, row), colour in zip(references.iterrows(), itertools.cycle(["grey", "black", "brown"])):
            axis.axhline(row[metric], linestyle="--", color=colour, label=label)
            spread = row[f"{metric}_std"]
            if pd.notna(spread):
                axis.axhspan(row[metric] - spread, row[metric] + spread, color=colour, alpha=0.12, linewidth=0)
        axis.set(title=metric, xlabel=key, ylabel=metric_label(metric))
        axis.grid(alpha=0.3)
    if others or len(references):
        panels[0][1].legend(fontsize=8)
    figure.suptitle(SPREAD_NOTE, fontsize=9)
    return figure


def plot_lambda_sweep(table: pd.DataFrame) -> Figure:
    """Validation loss against the inference-time lambda, one line per point that swept it (std
    over seeds as error bars)."""
    lams = swept_lambdas(table)
    columns = list(lams)
    figure = Figure(figsize=(4.5, 3.4), layout="constrained")
    axis = figure.subplots()
    for label, row in table[table[columns].notna().any(axis=1)].iterrows():
        spread = row[[f"{c}_std" for c in columns]].astype(float)
        axis.errorbar(list(lams.values()), row[columns].astype(float), yerr=spread, marker="o", capsize=3,
                      label=f"{label} (n={int(row['n_seeds'])})")
    axis.set(title="val/loss vs lambda at inference", xlabel="fusion lambda at inference",
             ylabel=metric_label("val/loss"))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return figure


def aggregate(sweep: Sweep, out_dir: Optional[str | Path] = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary table, segment table) of the finished runs, written with the plots into `out_dir`
    (default: the sweep's results dir). Only reads run dirs, so it can always be rebuilt."""
    out_dir = Path(out_dir or sweep.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = runs_frame(sweep)
    runs.to_csv(out_dir / "runs.csv", index=False)
    table = summary_table(runs, sweep.grid_keys)
    table.to_csv(out_dir / "table.csv")
    seeds = sorted(set(runs["seed"]))
    (out_dir / "table.md").write_text(f"Sweep `{sweep.name}` ({sweep.path}): mean ± sample std over seeds "
                                      f"{seeds}\n\n{markdown(table)}\n")
    plot_metrics(table).savefig(out_dir / "metrics.png", dpi=120)
    for key in sweep.grid_keys:
        values = table[key].dropna().infer_objects() if key in table else pd.Series(dtype=object)
        if len(values) and pd.api.types.is_numeric_dtype(values):
            plot_versus(table, key, sweep.grid_keys).savefig(out_dir / f"metrics_vs_{_slug(key)}.png", dpi=120)
    if swept_lambdas(table):
        plot_lambda_sweep(table).savefig(out_dir / "lambda_sweep.png", dpi=120)
    frame = segments_frame(runs)
    segments = segment_table(frame) if len(frame) else pd.DataFrame()
    if len(frame):
        segments.to_csv(out_dir / "segments.csv")
        (out_dir / "segments.md").write_text("Per position window, mean over seeds (count = samples whose "
                                             f"reference reaches it)\n\n{segments_markdown(segments)}\n")
        title = f"sweep {sweep.name}: mean over seeds per window"
        plot_position_eval(frame, title).savefig(out_dir / PNG_NAME, dpi=120)
    if sweep.reference:
        write_gaps(sweep, runs, table, segments, out_dir)
    return table, segments


def write_gaps(sweep: Sweep, runs: pd.DataFrame, table: pd.DataFrame, segments: pd.DataFrame, out_dir: Path) -> None:
    """gaps.csv/.md/.png, segment_gaps.csv/.md/.png and gap_heatmap.png (lit/gaps.py) of the finished runs."""
    finished = set(runs["point"])
    reference_of = {p: r for p, r in sweep.reference.items() if p in finished and r in finished}
    first = sweep.runs[0].config
    gaps = gap_table(runs, reference_of, first.decode.output, first.eval.answer_pattern)
    if gaps.empty:
        return
    gaps = gaps.join(table[[k for k in sweep.grid_keys if k in table]])
    gaps.to_csv(out_dir / "gaps.csv")
    (out_dir / "gaps.md").write_text("Each point minus its reference (paired 95% bootstrap over the test records; "
                                     f"mean over the seeds both ran)\n\n{gaps_markdown(gaps)}\n")
    plot_gaps(gaps).savefig(out_dir / "gaps.png", dpi=120)
    keys = heatmap_keys(gaps, sweep.grid_keys)
    if keys:
        plot_heatmaps(gaps, *keys).savefig(out_dir / "gap_heatmap.png", dpi=120)
    if len(segments):
        by_window = segment_gaps(segments, reference_of)
        by_window.to_csv(out_dir / "segment_gaps.csv")
        (out_dir / "segment_gaps.md").write_text("BLEU of each point minus its reference's per position window "
                                                 f"(mean over seeds; blank: a window one of them does not reach)\n\n"
                                                 f"{by_window.map(lambda v: '' if pd.isna(v) else f'{v:+.2f}').to_markdown(disable_numparse=True)}\n")
        plot_segment_gaps(by_window).savefig(out_dir / "segment_gaps.png", dpi=120)
