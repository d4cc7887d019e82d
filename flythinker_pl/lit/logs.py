"""Training progress: Lightning's tqdm bars on a terminal; anywhere else LineProgress (see console.py)."""
from __future__ import annotations

import time

from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

from ..console import line_due, on_terminal


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
        scores = ", ".join(f"{name} {float(value):.4f}" for name, value in trainer.callback_metrics.items()
                           if name.startswith("val/"))
        self._line(f"validation at step {trainer.global_step}: {scores}")

    def on_predict_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        total = int(trainer.num_predict_batches[dataloader_idx])
        if line_due(batch_idx + 1, total):
            self._line(f"decoding batch {batch_idx + 1}/{total}")


def progress_bar() -> ProgressBar:
    return TQDMProgressBar() if on_terminal() else LineProgress()
