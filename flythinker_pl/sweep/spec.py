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
    reference: method=sft            # optional: gaps of every other point vs its reference (evaluation/gaps.py);
                                     #   a label (reference: sft) is everyone's reference; a list of key=value
                                     #   ([method=sft, data.synthetic.hint=false]) must all hold
    ceiling: data.synthetic.hint=true   # optional, as `reference`: gaps.md adds the share of the ceiling's
                                     #   gap (over the same reference) that each point closes

`flythinker sweep FILE seeds=3` runs seeds 0, 1, 2 at every point instead of the file's `seeds` and
the points' own (`seeds=[4,5]` names them); the Makefile's SEEDS=1 passes `seeds=1`.

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

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import Config, ConfigError, load_config
from ..evaluation.sweep_report import slug

SWEEP_KEYS = ("name", "base", "overrides", "seeds", "grid", "points", "reference", "ceiling")
POINT_KEYS = ("label", "overrides", "config", "seeds")
OWNED_KEYS = ("seed", "logging.experiment")  # set per run by the sweep itself


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
    ceiling: dict[str, str] = field(default_factory=dict)  # point label -> its ceiling's label

    @property
    def results_dir(self) -> Path:
        return self.path.parent / "results" / self.name


def _dotlist_value(value: Any) -> str:
    """A YAML value as the text after `key=` in a dotlist override."""
    return value if isinstance(value, str) else json.dumps(value)


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


def _seeds_override(extra_overrides: list[str]) -> tuple[list[str], Optional[list[int]]]:
    """(the other overrides, the seeds of a command-line `seeds=N` (0 .. N-1) or `seeds=[a,b]`, or None)."""
    rest, seeds = [], None
    for override in extra_overrides:
        key, _, value = str(override).partition("=")
        if key.strip() != "seeds":
            rest.append(override)
            continue
        parsed = OmegaConf.from_dotlist([f"seeds={value}"]).seeds if value.strip() else None
        if isinstance(parsed, int) and not isinstance(parsed, bool) and parsed >= 1:
            seeds = list(range(parsed))
        else:
            listed = OmegaConf.to_object(parsed) if isinstance(parsed, ListConfig) else None
            seeds = _seeds(Path("command-line override"), listed) if listed is not None else None
            if seeds is None:
                raise SweepError(f"command-line override: seeds={value!r}: give a number of seeds (seeds=3 runs "
                                 "seeds 0, 1, 2 at every point) or a list of distinct integers (seeds=[0,1,2])")
    return rest, seeds


def load_sweep(path: str | Path, extra_overrides: list[str] = ()) -> Sweep:
    """Read and validate a sweep file; every run's config is loaded (and so validated) here,
    before anything runs. `extra_overrides` apply to every point after the file's `overrides`;
    `seeds=...` among them replaces every point's seeds."""
    path = Path(path)
    extra_overrides, seeds_override = _seeds_override(list(extra_overrides))
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
    if slug(name) != name:
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
                                    f"logging.experiment=ablation_{name}/{slug(point.label)},seed={seed}"],
                                   f"point '{point.label}'"))
            for point in points for seed in seeds_override or point.seeds or seeds]
    return Sweep(path, name, list(grid or {}), points, runs, _references(path, node.get("reference"), runs),
                 _references(path, node.get("ceiling"), runs, "ceiling"))


def _references(path: Path, reference: Any, runs: list[Run], what: str = "reference") -> dict[str, str]:
    """{point: its reference point} for the sweep's `reference` (or `ceiling`): a point's label (everyone's)
    or `key=value`, or a list of them that must all hold (per point, evaluation/gaps.py)."""
    if reference is None:
        return {}
    labels = list(dict.fromkeys(run.point.label for run in runs))
    if isinstance(reference, str) and "=" not in reference:
        if reference not in labels:
            raise SweepError(f"{path}: {what}: no point is labelled {reference!r} (points: {', '.join(labels)})")
        return {label: reference for label in labels if label != reference}
    listed = reference if isinstance(reference, list) and reference else [reference]
    conditions = {}
    for condition in listed:
        key = _override_key(condition, f"{path}: {what}")
        conditions[key] = OmegaConf.select(OmegaConf.from_dotlist([condition]), key)
    configs = {run.point.label: OmegaConf.structured(run.config) for run in runs}
    if not any(all(OmegaConf.select(node, k) == v for k, v in conditions.items()) for node in configs.values()):
        raise SweepError(f"{path}: {what}: no point has {' and '.join(map(str, listed))}")
    return references(configs, {run.point.label: run.point.settings for run in runs}, conditions)


def _load(path: Path, base: Path, overrides: list[str], where: str) -> Config:
    try:
        return load_config(base, overrides)
    except ConfigError as err:
        raise SweepError(f"{path}: {where}: {str(err).removeprefix('command-line override: ')}") from None




def references(configs: dict[str, DictConfig], settings: dict[str, dict], conditions: dict[str, Any]) -> dict[str, str]:
    """{point label: its reference's label} for every point that has one: the points where every
    `conditions` key has its value are the candidates; each other point gets the candidate whose grid
    settings (the condition keys aside) it shares, the most specific one. `configs`: each point's run
    config; `settings`: each point's grid settings."""
    candidates = [label for label, node in configs.items()
                  if all(OmegaConf.select(node, k) == v for k, v in conditions.items())]
    found = {}
    for label, node in configs.items():
        if label in candidates:
            continue
        matching = [(len(settings[c]), c) for c in candidates
                    if all(OmegaConf.select(node, k) == v for k, v in settings[c].items() if k not in conditions)]
        if matching:
            found[label] = max(matching)[1]  # the most specific reference
    return found
