"""Raw rows from where a split lives: JSON (a list), JSON lines, Parquet, a `datasets` directory
(`save_to_disk`) or the hub; and where that is for a config.

Layouts under `data.path` (for config `<task>_<setting>`, split S):
    <path>/<task>_<setting>/S.{jsonl,json,parquet}      a directory per config
    <path>/S.{jsonl,json,parquet}                       the split files directly
    <path>[/<task>_<setting>]/S-*.parquet or S/*.parquet the hub's Parquet shards
    <path>[/<task>_<setting>]/S/ (save_to_disk) or a DatasetDict directory holding S
`data.files` names one file (or `datasets` directory) per split instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..config import DataConfig
from . import synthetic, synthetic_rule, synthetic_signature
from .schema import DataError, Unreadable

SPLITS = ("train", "val", "test")
SUFFIXES = (".jsonl", ".json", ".parquet")
DATASETS_HINT = "pip install datasets (or pip install 'flythinker-pl[datasets]')"


def config_name(cfg: DataConfig) -> str:
    return f"{cfg.task}_{cfg.setting}"


def import_datasets():
    """The optional `datasets` library, or an error that says how to get it."""
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"reading a `datasets` directory or the hub needs the optional `datasets` library: "
            f"{DATASETS_HINT}; or convert the data to JSON lines / Parquet"
        ) from None
    return datasets


def _utf8(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")  # a byte-order mark is not an error
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path}: not valid UTF-8 at byte {err.start} (line {line}): {err.reason}; re-encode the file as UTF-8"
        ) from None


def read_json(path: Path) -> list:
    text = _utf8(path.read_bytes(), path)
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg} "
            "(a truncated or malformed file; nothing in it can be read)"
        ) from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of records, got a JSON {type(rows).__name__}")
    return rows


def read_jsonl(path: Path, limit: Optional[int] = None) -> list:
    """One row per non-blank line; a line that is not valid UTF-8 or JSON becomes `Unreadable`."""
    rows = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                rows.append(json.loads(raw.decode("utf-8-sig")))
            except UnicodeDecodeError as err:
                rows.append(Unreadable("not_utf8", f"line {line_no}: not valid UTF-8 at byte {err.start} of the line"))
            except json.JSONDecodeError as err:
                rows.append(Unreadable("invalid_json", f"line {line_no}: invalid JSON ({err.msg})"))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def read_parquet(paths: list[Path]) -> list:
    import pyarrow.parquet as pq

    rows = []
    for path in paths:
        try:
            rows += pq.read_table(path).to_pylist()
        except Exception as err:  # pyarrow raises several types for a damaged file
            raise DataError(f"{path}: not a readable Parquet file ({type(err).__name__}: {err})") from None
    return rows


def read_saved_dataset(path: Path, split: str) -> list:
    datasets = import_datasets()
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{path}: a DatasetDict without split '{split}' (it has {', '.join(loaded)})")
        loaded = loaded[split]
    return loaded.to_list()


def read_hub(dataset_id: str, name: str, split: str) -> list:
    return import_datasets().load_dataset(dataset_id, name, split=split).to_list()


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists())


def read_path(path: Path, split: str, limit: Optional[int] = None) -> list:
    """Rows of one split stored at `path` (a file, a directory of Parquet shards or a `datasets` directory)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if is_saved_dataset(path):
        rows = read_saved_dataset(path, split)
    elif path.is_dir():
        shards = sorted(path.glob("*.parquet"))
        if not shards:
            raise DataError(f"{path}: a directory with neither Parquet shards nor a `datasets` save_to_disk layout")
        rows = read_parquet(shards)
    elif path.suffix == ".jsonl":
        return read_jsonl(path, limit)
    elif path.suffix == ".json":
        rows = read_json(path)
    elif path.suffix == ".parquet":
        rows = read_parquet([path])
    else:
        raise DataError(f"{path}: unknown format; use one of {', '.join(SUFFIXES)} or a `datasets` directory")
    return rows[:limit]


def read_config_dir(directory: Path, split: str, limit: Optional[int]) -> Optional[tuple[str, list]]:
    """(source, rows) of `split` in one config directory, or None when it is not there."""
    for candidate in [directory / f"{split}{suffix}" for suffix in SUFFIXES] + [directory / split]:
        if candidate.exists():
            return str(candidate), read_path(candidate, split, limit)
    if is_saved_dataset(directory):  # a DatasetDict saved as a whole
        return str(directory), read_path(directory, split, limit)
    if shards := sorted(directory.glob(f"{split}-*.parquet")):
        return f"{directory}/{split}-*.parquet", read_parquet(shards)[:limit]
    return None


def resolve_root(cfg: DataConfig) -> Path:
    """`data.path`, or the synthetic set (generated once, deterministic in `data.synthetic`)."""
    if cfg.path:
        return Path(cfg.path).expanduser()
    if cfg.task != "product_review":
        raise DataError(f"the synthetic data set is product_review only; set data.path for data.task={cfg.task}")
    made = cfg.synthetic
    if made.kind == "signature":
        return synthetic_signature.generate(
            cfg.synthetic_dir, made.num_users, made.reviews_per_user, made.reveal, made.seed, made.hint
        )
    if made.kind == "rule":
        return synthetic_rule.generate(cfg.synthetic_dir, made.num_users, made.reviews_per_user, made.seed, made.hint)
    return synthetic.generate(cfg.synthetic_dir, made.num_users, made.reviews_per_user, made.seed, made.rounds)


def read_split(cfg: DataConfig, split: str) -> tuple[str, list]:
    """(source name for messages, raw rows) of one split, at most `data.max_records` of them."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if cfg.files:
        if split not in cfg.files:
            raise DataError(f"data.files names no file for split '{split}' (it has {', '.join(cfg.files)})")
        path = Path(cfg.files[split]).expanduser()
        return str(path), read_path(path, split, cfg.max_records)
    if cfg.hub and not cfg.path:
        rows = read_hub(cfg.hub, config_name(cfg), split)
        return f"hub:{cfg.hub}/{config_name(cfg)}[{split}]", rows[: cfg.max_records]
    root = resolve_root(cfg)
    for directory in (root / config_name(cfg), root):
        if directory.is_dir() and (found := read_config_dir(directory, split, cfg.max_records)) is not None:
            return found
    raise FileNotFoundError(
        f"no '{split}' split for {config_name(cfg)} under {root}: expected {root}/{config_name(cfg)}/{split}"
        f"{{{','.join(SUFFIXES)}}} (or the same directly under {root}, Parquet shards or a `datasets` "
        "directory). Real data: python -m flythinker_pl.data.convert --source amazon|acl --out DIR"
    )
