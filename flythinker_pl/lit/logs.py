"""What a run shows as it goes and in TensorBoard.

- Training progress: Lightning's tqdm bars on a terminal; anywhere else LineProgress (see console.py).
- RunLogger: a run's TensorBoard events go to `<run dir>/<method>/` (events_dir), so TensorBoard names
  each run "<experiment>/version_N/<method>".
- One value per run (the decoded split's scores, the validation before training, the inference-time
  lambda sweep) is a scalar too, as HPARAMS reads values from scalars only, but under `z_results/`
  (result_tag): SCALARS opens its first two sections in alphabetical order, which are then curves.
- log_hparams: the HPARAMS tab. TensorBoard reads the columns from one run's experiment config (the
  first it finds) and ticks the first 5 settings (by name) and the first 5 metrics (in order): every
  run writes the same config, whose first columns are what defines a run (`HEADLINE`) and its results
  (`headline_metrics`). Settings a method does not have (`OWN_GROUPS`) are left blank in its row.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import Container, DictConfig, OmegaConf
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from torch.utils.tensorboard import SummaryWriter

from ..config import REASONER_METHODS, Config
from ..console import line_due, on_terminal
from .rundirs import version_number


class LineProgress(ProgressBar):
    """Lightning progress as plain lines: training every tenth of max_steps (with the loss), each
    validation's loss, prediction every tenth of its batches."""

    def __init__(self):
        super().__init__()
        self._enabled, self._start, self._last_step = True, time.perf_counter(), None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _line(self, text: str) -> None:
        if self._enabled:
            print(f"{text} ({time.perf_counter() - self._start:.0f} s)", flush=True)

    def on_train_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
        step = trainer.global_step
        if step != self._last_step and line_due(step, total):
            self._last_step = step
            loss = trainer.callback_metrics.get("train/loss")
            self._line(f"train step {step}/{total}" + (f", loss {float(loss):.4f}" if loss is not None else ""))

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        scores = ", ".join(
            f"{name} {float(value):.4f}" for name, value in trainer.callback_metrics.items() if name.startswith("val/")
        )
        self._line(f"validation at step {trainer.global_step}: {scores}")

    def on_predict_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        total = int(trainer.num_predict_batches[dataloader_idx])
        if line_due(batch_idx + 1, total):
            self._line(f"decoding batch {batch_idx + 1}/{total}")


def progress_bar() -> ProgressBar:
    return TQDMProgressBar() if on_terminal() else LineProgress()


# ---- TensorBoard ---------------------------------------------------------------------------------

RESULTS = "z_results"  # the section of one-value scalars: "z" sorts it after every curve's section


def result_tag(key: str) -> str:
    """The TensorBoard tag of a metrics.json key that holds one value per run."""
    return f"{RESULTS}/{key}"


def events_dir(run_dir: str | Path, method: Optional[str]) -> Path:
    """Where a run's TensorBoard events go: `<run dir>/<method>/` (the run dir itself for predictions
    whose method is unknown)."""
    return Path(run_dir) / method if method else Path(run_dir)


class RunLogger(TensorBoardLogger):
    """Lightning's TensorBoard logger for one run dir: trainer.log_dir and hparams.yaml stay in the run
    dir, the events go to events_dir(run_dir, method); the `epoch` scalar Lightning adds to every
    logging call is left out (a run is measured in steps; `epoch` would open SCALARS as a chart of 0s).
    `series`: the tags logged so far (curves), which log_hparams tells from one-value results."""

    def __init__(self, run_dir: Path, method: str):
        super().__init__(
            save_dir=str(run_dir.parent.parent),
            name=run_dir.parent.name,
            version=version_number(run_dir),
            default_hp_metric=False,
        )
        self.events_dir, self.series = events_dir(run_dir, method), set()

    @property
    @rank_zero_experiment
    def experiment(self) -> SummaryWriter:
        if self._experiment is None:
            self._experiment = SummaryWriter(log_dir=str(self.events_dir))
        return self._experiment

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: Optional[int] = None) -> None:
        metrics = {name: value for name, value in metrics.items() if name != "epoch"}
        self.series.update(metrics)
        super().log_metrics(metrics, step)


# The HPARAMS columns TensorBoard ticks first: (name, display name). Names sort before every config
# key ("<group>/<key>", lower case), in this order; each is a setting the run's row states in words.
HEADLINE = (
    ("1 method", "method"),
    ("2 generator", "Generator (mode)"),
    ("3 reasoner", "Reasoner (mode), span"),
    ("4 lambda", "lambda"),
    ("5 data", "task_setting, seed"),
)
# Config groups only some methods have: other methods' rows leave them blank (SFT has no fusion.lam).
OWN_GROUPS = {
    "reasoner": REASONER_METHODS,
    "fusion": REASONER_METHODS,
    "coconut": ("coconut",),
    "recurrent": ("flythinker_recurrent",),
}
SCORE_NAMES = {
    "bleu": "BLEU",
    "rouge1": "ROUGE-1",
    "rougeL": "ROUGE-L",
    "meteor": "METEOR",
    "bertscore": "BERTScore",
    "answer_accuracy": "answer accuracy",
}


def headline(cfg: Config) -> dict[str, object]:
    """The HEADLINE columns' values (None: a setting this method does not have)."""
    reasoning = cfg.method in REASONER_METHODS
    reasoner = "shared base" if cfg.reasoner.shared_base else cfg.reasoner.name
    values = [
        cfg.method,
        f"{cfg.generator.name} ({cfg.generator.mode})",
        f"{reasoner} ({cfg.reasoner.mode}), span {cfg.fusion.span}" if reasoning else None,
        float(cfg.fusion.lam) if reasoning else None,
        f"{cfg.data.task}_{cfg.data.setting}, seed {cfg.seed}",
    ]
    return {name: value for (name, _), value in zip(HEADLINE, values)}


def _flat(cfg: Config) -> dict[str, object]:
    """Every config key as "<group>/<key>" (top-level keys as they are) with its value. A mapping with
    free keys (data.files) is one value: its keys differ between runs, the columns may not."""

    def flat(node: DictConfig, prefix: str = ""):
        for name in node:
            if isinstance(node[name], DictConfig) and OmegaConf.get_type(node, name) is not dict:  # a config group
                yield from flat(node[name], f"{prefix}{name}/")
            else:
                value = node[name]
                yield f"{prefix}{name}", OmegaConf.to_container(value) if isinstance(value, Container) else value

    return dict(flat(OmegaConf.structured(cfg)))


def _kind(value: object) -> int:
    if isinstance(value, bool):
        return api_pb2.DATA_TYPE_BOOL
    return api_pb2.DATA_TYPE_FLOAT64 if isinstance(value, (int, float)) else api_pb2.DATA_TYPE_STRING


def _cell(value: object, kind: int) -> bool | float | str:
    """A value as its column's kind shows it; anything else (lists, a number where the default is text) as text."""
    if _kind(value) == kind != api_pb2.DATA_TYPE_STRING:
        return value if kind == api_pb2.DATA_TYPE_BOOL else float(value)
    return value if isinstance(value, str) else str(value)


def hparam_columns(cfg: Config) -> tuple[list[api_pb2.HParamInfo], dict[str, object]]:
    """(the columns, the same for every run: HEADLINE, then every config key, typed by its schema
    default; this run's values, without the groups its method does not have)."""
    defaults, displays = headline(Config()) | _flat(Config()), dict(HEADLINE)
    columns = [
        api_pb2.HParamInfo(name=name, display_name=displays.get(name, ""), type=_kind(default))
        for name, default in defaults.items()
    ]
    own = {group for group, methods in OWN_GROUPS.items() if cfg.method not in methods}
    values = {
        name: value
        for name, value in (headline(cfg) | _flat(cfg)).items()
        if value is not None and name.split("/")[0] not in own
    }
    kinds = {column.name: column.type for column in columns}  # a key no default has (none today): as text
    return columns, {name: _cell(value, kinds.get(name, api_pb2.DATA_TYPE_STRING)) for name, value in values.items()}


def headline_metrics(split: str) -> list[str]:
    """The results TensorBoard ticks first (BLEU with its interval, ROUGE-L, METEOR), then the other
    scores, how outputs ended, the validation loss and the decoding cost."""
    first = [f"{split}/bleu", f"{split}/bleu_ci_low", f"{split}/bleu_ci_high", f"{split}/rougeL", f"{split}/meteor"]
    then = [f"{split}/{name}{side}" for name in ("rouge1", "rougeL", "meteor") for side in ("", "_ci_low", "_ci_high")]
    return list(dict.fromkeys([*first, *then, f"{split}/eos_share", "val/loss", "decode/ms_per_token"]))


def _metric_display(tag: str) -> str:
    """ "test BLEU", "test BLEU 95% low": the score's name, the split, the side of its interval."""
    split, _, name = tag.removeprefix(f"{RESULTS}/").rpartition("/")
    base, side = (
        (name[:-7], " 95% low")
        if name.endswith("_ci_low")
        else (name[:-8], " 95% high")
        if name.endswith("_ci_high")
        else (name, "")
    )
    if base in SCORE_NAMES and split and "/" not in split:
        return f"{split} {SCORE_NAMES[base]}{side}"
    return {"eos_share": f"{split} ended by EOS", "ms_per_token": "decode ms/token"}.get(
        name, tag.removeprefix(f"{RESULTS}/")
    )


def _summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    summary = Summary()
    summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR)
    return summary


def log_hparams(logger: RunLogger, cfg: Config, numbers: dict[str, float], step: int, later: list[str]) -> None:
    """TensorBoard's HPARAMS entry: the experiment config (hparam_columns; metrics headline_metrics,
    then the rest of `later` and of this run's numbers), this run's settings, and its numbers that are
    no curve as one-value scalars at `step` (result_tag; the tab shows each metric's last value).
    `later`: the metrics logged after fit (the decoded split's scores, evaluate.log_scores)."""
    for key, value in numbers.items():
        if key not in logger.series:
            logger.experiment.add_scalar(result_tag(key), value, step)
    columns, values = hparam_columns(cfg)
    keys = dict.fromkeys([*headline_metrics(cfg.decode.split), *later, *sorted(numbers)])
    tags = [key if key in logger.series else result_tag(key) for key in keys]
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=_metric_display(tag)) for tag in tags]
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for name, value in values.items():
        field = {bool: "bool_value", float: "number_value"}.get(type(value), "string_value")
        setattr(start.hparams[name], field, value)
    writer = logger.experiment._get_file_writer()
    for tag, data in [
        (
            metadata.EXPERIMENT_TAG,
            plugin_data_pb2.HParamsPluginData(
                experiment=api_pb2.Experiment(hparam_infos=columns, metric_infos=metrics)
            ),
        ),
        (metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start)),
        (
            metadata.SESSION_END_INFO_TAG,
            plugin_data_pb2.HParamsPluginData(
                session_end_info=plugin_data_pb2.SessionEndInfo(
                    status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time()
                )
            ),
        ),
    ]:
        writer.add_summary(_summary(tag, data), step)
