"""The sweep file (ablations/<name>.yaml; every key in the README's "Ablations (sweeps)" and
"Sweeps on a cluster"), validated before anything runs: its points x seeds as runs, each with its
loaded config, the runs each one waits for, the references of the gap tables, and the launcher.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import Config, ConfigError, load_config
from ..evaluation.sweep_report import slug

SWEEP_KEYS = ("name", "base", "overrides", "seeds", "grid", "points", "reference", "ceiling", "launcher")
POINT_KEYS = ("label", "overrides", "config", "seeds")
OWNED_KEYS = ("seed", "logging.experiment")  # set per run by the sweep itself
# Config keys that name another run's outputs: a run whose value lies in another run's experiment
# dir waits for that run (inline: comes after it; slurm: an afterok dependency).
READS_RUNS = ("coconut.init_from",)
LAUNCHERS = ("inline", "local", "slurm")


class SweepError(ConfigError):
    pass


@dataclass
class SlurmSettings:
    """`launcher.slurm`: the resources of every job. Nodes and tasks per node come from each point's
    trainer.num_nodes and trainer.devices (one task per device, as experiments/slurm/train.sbatch)."""

    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    time: int = 240  # minutes per job; signal_delay_s before it the job is requeued, and resumes
    cpus_per_task: Optional[int] = None  # also each task's torch threads (OMP_NUM_THREADS)
    mem: Optional[str] = None  # per node, as sbatch --mem takes it: 64G
    gpus_per_node: Optional[int] = None  # default: one per task when trainer.accelerator is gpu/cuda, else none
    constraint: Optional[str] = None
    setup: list[str] = field(default_factory=list)  # shell lines before each job: ["module load cuda/12.1"]
    sbatch: dict[str, Any] = field(default_factory=dict)  # any other sbatch option: {exclude: "n[1-2]", mail-type: END}
    signal_delay_s: int = 120  # SLURM signals the job this long before its time limit
    max_requeues: int = 3  # time-limit requeues of one job before it counts as failed


@dataclass
class LauncherSettings:
    """`launcher:` (and --launcher / --parallel): where the runs execute (sweep/launchers.py)."""

    name: str = "inline"  # inline (this process, in order) | local (jobs on this machine) | slurm (SLURM jobs)
    parallel: Optional[int] = None  # runs at once: local (default 1) splits GPUs and CPU threads; slurm: array limit
    slurm: SlurmSettings = field(default_factory=SlurmSettings)


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
    after: tuple[str, ...] = ()  # the keys of the runs this one reads (READS_RUNS), which come before it

    @property
    def key(self) -> str:
        """The run's name within its sweep, as in its experiment: "<label>,seed=<seed>"."""
        return f"{self.point.label},seed={self.seed}"


@dataclass
class Sweep:
    path: Path
    name: str
    grid_keys: list[str]
    points: list[Point]
    runs: list[Run]  # point-major: every seed of the first point, then of the next
    reference: dict[str, str] = field(default_factory=dict)  # point label -> its reference's label
    ceiling: dict[str, str] = field(default_factory=dict)  # point label -> its ceiling's label
    launcher: LauncherSettings = field(default_factory=LauncherSettings)

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
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
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
                raise SweepError(
                    f"command-line override: seeds={value!r}: give a number of seeds (seeds=3 runs "
                    "seeds 0, 1, 2 at every point) or a list of distinct integers (seeds=[0,1,2])"
                )
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
    seeds = _seeds(path, node.get("seeds"))
    runs = [
        Run(
            point,
            seed,
            _load(
                path,
                point.config or base,
                [
                    # Declared seeds vary the training order too (data.seed), unless an override sets it:
                    # a fully fine-tuned Generator has no random init, so `seed` alone changes nothing.
                    *([f"data.seed={seed}"] if seeds_override or point.seeds or seeds else []),
                    *shared,
                    *point.overrides,
                    f"seed={seed}",
                    f"logging.experiment=ablation_{name}/{slug(point.label)},seed={seed}",
                ],
                f"point '{point.label}'",
            ),
        )
        for point in points
        for seed in seeds_override or point.seeds or seeds or [base_seed]
    ]
    _dependencies(path, runs)
    return Sweep(
        path,
        name,
        list(grid or {}),
        points,
        runs,
        _references(path, node.get("reference"), runs),
        _references(path, node.get("ceiling"), runs, "ceiling"),
        launcher_settings(path, node.get("launcher")),
    )


def _check_keys(path: Path, where: str, node: Any, schema) -> None:
    valid = [f.name for f in dataclasses.fields(schema)]
    if not isinstance(node, dict):
        raise SweepError(f"{path}: {where} must be a mapping with keys {', '.join(valid)} (got {node!r})")
    unknown = sorted(set(node) - set(valid))
    if unknown:
        raise SweepError(f"{path}: {where}: unknown key '{unknown[0]}'; valid keys: {', '.join(valid)}")


def launcher_settings(path: Path, node: Any) -> LauncherSettings:
    """The `launcher:` block, checked key by key (one line naming the key and the valid ones)."""
    node = {} if node is None else node
    _check_keys(path, "launcher", node, LauncherSettings)
    _check_keys(path, "launcher.slurm", node.get("slurm") or {}, SlurmSettings)
    try:
        settings = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LauncherSettings), node))
    except (OmegaConfBaseException, ValueError) as err:
        raise SweepError(f"{path}: launcher: {str(err).splitlines()[0]}") from None
    return choose_launcher(path, settings)


def choose_launcher(
    path: Path, settings: LauncherSettings, name: Optional[str] = None, parallel: Optional[int] = None
) -> LauncherSettings:
    """`settings` with the command line's --launcher and --parallel over them, checked."""
    settings = dataclasses.replace(settings, name=name or settings.name, parallel=parallel or settings.parallel)
    if settings.name not in LAUNCHERS:
        raise SweepError(f"{path}: launcher: name={settings.name!r} is not one of {', '.join(LAUNCHERS)}")
    if settings.parallel is not None and settings.parallel < 1:
        raise SweepError(f"{path}: launcher: parallel={settings.parallel} must be >= 1")
    return settings


def _dependencies(path: Path, runs: list[Run]) -> None:
    """Sets each run's `after`: the runs whose experiment dir one of its READS_RUNS keys points into."""
    homes = {run.key: (Path(run.config.logging.root_dir) / run.config.logging.experiment).resolve() for run in runs}
    for index, run in enumerate(runs):
        for config_key in READS_RUNS:
            value = operator.attrgetter(config_key)(run.config)
            target = Path(str(value)).expanduser().resolve() if value else None
            for position, other in enumerate(runs):
                home = homes[other.key]
                if target is None or other is run or not (target == home or home in target.parents):
                    continue
                if position > index:
                    raise SweepError(
                        f"{path}: point '{run.point.label}' reads run '{other.key}' ({config_key}), "
                        f"which comes after it: list point '{other.point.label}' first"
                    )
                run.after += (other.key,)


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
    candidates = [
        label for label, node in configs.items() if all(OmegaConf.select(node, k) == v for k, v in conditions.items())
    ]
    found = {}
    for label, node in configs.items():
        if label in candidates:
            continue
        matching = [
            (len(settings[c]), c)
            for c in candidates
            if all(OmegaConf.select(node, k) == v for k, v in settings[c].items() if k not in conditions)
        ]
        if matching:
            found[label] = max(matching)[1]  # the most specific reference
    return found
