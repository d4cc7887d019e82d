"""What the command line prints, apart from results.

Progress: a bar on a terminal, a line every tenth of the work anywhere else (a file, `| tee`, a SLURM
log), where carriage-return bars become megabytes of redraws. Noise: known-harmless warnings and
notices are filtered where they come from (category and module, or logger and message), never with a
blanket filter, so anything new still shows.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from typing import Iterable, Iterator, TypeVar

LINES_PER_STAGE = 10
T = TypeVar("T")
# Lightning's per-Trainer notices (rank_zero_info) that say nothing about this run.
_NOTICES = (
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "💡 Tip:",
    "`Trainer.fit` stopped:",
    "Restoring states from the checkpoint",
    "Loaded model weights from the checkpoint",
)


class _DropNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_NOTICES)


def silence_known_noise() -> None:
    """Call before the heavy imports (it sets an environment variable they read). Idempotent."""
    # transformers 5 deprecation, raised inside peft's gradient-checkpointing setup
    warnings.filterwarnings(
        "ignore",
        message=r"`is_gradient_checkpointing` is deprecated",
        category=FutureWarning,
        module="transformers.modeling_utils",
    )
    # Lightning 2.6's own use of torch's pytree API
    warnings.filterwarnings(
        "ignore", message=r".*LeafSpec.*is deprecated", module="lightning.pytorch.utilities._pytree"
    )
    # a frozen Reasoner is kept in eval mode on purpose (FlyThinker.train)
    warnings.filterwarnings(
        "ignore",
        message=r"Found \d+ module\(s\) in eval mode at the start of training",
        module="lightning.pytorch.loops.fit_loop",
    )
    # val/loss and val/ppl come from a MeanMetric that already combined the ranks (MethodModule)
    warnings.filterwarnings(
        "ignore",
        message=r"It is recommended to use `self.log\('val/(loss|ppl)', \.\.\., sync_dist",
        module="lightning.pytorch.trainer.connectors.logger_connector.result",
    )
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in target.filters):
            target.addFilter(_DropNotices())
    if not on_terminal():  # the "Loading weights" / "Writing model shards" bars of every model load
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def on_terminal() -> bool:
    return sys.stdout.isatty()


def line_due(done: int, total: int) -> bool:
    """Whether a progress line is due after `done` of `total` (every tenth, and at the end)."""
    return done % max(1, total // LINES_PER_STAGE) == 0 or done == total


def progress(items: Iterable[T], total: int, desc: str) -> Iterator[T]:
    """tqdm on a terminal, else a line every tenth of `total`."""
    if on_terminal():
        from tqdm.auto import tqdm

        yield from tqdm(items, total=total, desc=desc, leave=False)
        return
    start = time.perf_counter()
    for done, item in enumerate(items, 1):
        yield item
        if line_due(done, total):
            print(f"{desc}: {done}/{total} ({time.perf_counter() - start:.0f} s)", flush=True)
