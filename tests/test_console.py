"""What the command line prints: progress as lines off a terminal, known noise filtered at its source."""

from __future__ import annotations

import logging
import warnings

from flythinker_pl.console import progress, silence_known_noise


def test_progress_off_a_terminal_prints_a_line_every_tenth(capsys):
    assert list(progress(range(25), 25, "pretrain")) == list(range(25))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        f"pretrain: {n}/25" for n in (2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 25)
    ]


def test_known_noise_is_filtered_by_source_and_the_rest_still_shows(caplog):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_noise()
        known = "`is_gradient_checkpointing` is deprecated and will be removed in v6."
        warnings.warn_explicit(known, FutureWarning, "modeling_utils.py", 1, module="transformers.modeling_utils")
        warnings.warn_explicit(known, FutureWarning, "elsewhere.py", 1, module="my_project")  # another source
        warnings.warn_explicit(
            "something new", FutureWarning, "modeling_utils.py", 2, module="transformers.modeling_utils"
        )
    assert [str(w.message) for w in caught] == [known, "something new"]

    notices = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        notices.info("GPU available: False, used: False")
        notices.info("💡 Tip: For seamless cloud logging ...")
        notices.info("Checkpoint directory exists and is not empty.")
    assert [record.getMessage() for record in caplog.records] == ["Checkpoint directory exists and is not empty."]
