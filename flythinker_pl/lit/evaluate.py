"""Scoring predictions into their run dirs: metrics.json (merged), position_eval.csv/.png and the
plot as a TensorBoard image; several runs also get one comparison table and plot."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pandas as pd
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from ..config import EvalConfig, load_config
from ..evaluation.predictions import evaluate_predictions
from ..evaluation.report import CSV_NAME, comparison_table, save_position_eval, segment_table
from .rundirs import holding


EVAL_CONFIG = "eval_config.yaml"  # the eval settings behind a run dir's scores


def eval_yaml(cfg: EvalConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def predictions_file(path: str | Path) -> Path:
    """A predictions file, a run dir holding one, or an experiment dir (its newest run with one)."""
    path = Path(path)
    if path.is_file():
        return path
    return holding(path, "predictions.jsonl", "no predictions.jsonl here (run `flythinker predict` first)") \
        / "predictions.jsonl"


def run_name(run_dir: Path) -> str:
    return f"{run_dir.parent.name}/{run_dir.name}"


def _tokenizer_of(run_cfg):
    """The Generator tokenizer of the run that made the predictions (for eval.segment_unit=tokens)."""
    from ..data.datamodule import pretraining_corpus
    from ..models.backbones import load_tokenizer

    return load_tokenizer(run_cfg, corpus=lambda: pretraining_corpus(run_cfg.data))


def decode_cost(predictions: Path) -> dict:
    """Decoding latency from the timings `flythinker predict` writes on every row (each row carries
    its batch's): ms per decoding step, and seconds per sample (which also counts, e.g., the
    rationale a CoT model writes before its response). Empty for predictions made elsewhere."""
    rows = pd.read_json(predictions, lines=True)
    if not {"ms_per_token", "batch_seconds", "batch_size"} <= set(rows):
        return {}
    return {"ms_per_token": float(rows["ms_per_token"].mean()),
            "seconds_per_sample": float((rows["batch_seconds"] / rows["batch_size"]).mean())}


def evaluate_run(predictions: Path, cfg: EvalConfig) -> tuple[dict, pd.DataFrame]:
    saved = predictions.with_suffix(".config.yaml")  # absent for predictions made elsewhere
    run_cfg = load_config(saved) if saved.exists() else None
    if cfg.segment_unit == "tokens" and run_cfg is None:
        raise FileNotFoundError(f"{saved}: eval.segment_unit=tokens needs the config that made the predictions")
    tokenizer = _tokenizer_of(run_cfg) if cfg.segment_unit == "tokens" else None
    overall, segments = evaluate_predictions(predictions, cfg.segment_width, cfg.segment_max, cfg.segment_unit,
                                             tokenizer, cfg.n_bootstrap, cfg.bootstrap_seed)
    run_dir = predictions.parent
    files = save_position_eval(segments, run_dir)
    with SummaryWriter(str(run_dir)) as writer:
        writer.add_figure("position_eval", files.figure, close=False)
    split = run_cfg.decode.split if run_cfg else "test"
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    metrics.update({f"{split}/{name}": value for name, value in overall.items()})
    metrics.update({f"decode/{name}": value for name, value in decode_cost(predictions).items()})
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    (run_dir / EVAL_CONFIG).write_text(eval_yaml(cfg))
    return overall, segments


def evaluate_runs(paths: list[str | Path], cfg: EvalConfig,
                  out_dir: Optional[str | Path] = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(comparison table, segment scores of every run). With several runs and `out_dir`, the
    combined position_eval.csv/.png (one line per run) are written there too."""
    scores, frames = {}, []
    for path in paths:
        predictions = predictions_file(path)
        overall, segments = evaluate_run(predictions, cfg)
        name = run_name(predictions.parent)
        scores[name] = overall
        frames.append(segments.assign(run=name))
    combined = pd.concat(frames, ignore_index=True)
    if out_dir is not None and len(frames) > 1:
        save_position_eval(combined, out_dir)
    return comparison_table(scores), combined


def finished_run_dir(path: str | Path) -> Path:
    """A run dir, or an experiment dir whose newest finished version (with metrics.json) is taken."""
    return holding(path, "metrics.json", "no finished run (a run dir with metrics.json) found")


def runs_table(paths: list[str | Path]) -> pd.DataFrame:
    """One row per run from its metrics.json: nothing is recomputed."""
    rows = []
    for path in paths:
        run_dir = finished_run_dir(path)
        rows.append({"run": run_name(run_dir), **json.loads((run_dir / "metrics.json").read_text())})
    return pd.DataFrame(rows).set_index("run")


def runs_segments(paths: list[str | Path], out_dir: Optional[str | Path] = None) -> pd.DataFrame:
    """The runs' position_eval.csv side by side (segment_table layout); with `out_dir`, also the
    combined CSV and plot (one line per run)."""
    frames = []
    for path in paths:
        run_dir = finished_run_dir(path)
        if not (run_dir / CSV_NAME).exists():
            raise FileNotFoundError(f"{run_dir}: no {CSV_NAME} (run `flythinker evaluate` or `flythinker run`)")
        frames.append(pd.read_csv(run_dir / CSV_NAME).assign(run=run_name(run_dir)))
    combined = pd.concat(frames, ignore_index=True)
    if out_dir is not None:
        save_position_eval(combined, out_dir)
    return segment_table(combined)
