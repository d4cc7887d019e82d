"""Position-segmented evaluation, predictions.jsonl scoring, tables and plots."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from flythinker_pl.evaluation import metrics
from flythinker_pl.evaluation.predictions import evaluate_predictions, read_predictions
from flythinker_pl.evaluation.report import (
    CSV_NAME,
    PNG_NAME,
    comparison_table,
    plot_position_eval,
    save_position_eval,
    segment_table,
)
from flythinker_pl.evaluation.segments import position_scores, text_units, windows

VOCABULARY = "the review praises battery life screen sound price and shipping speed of this phone".split()


def words(count: int, offset: int = 0) -> str:
    return " ".join(VOCABULARY[(i + offset) % len(VOCABULARY)] for i in range(count))


def cut(text: str, start: int, end: int) -> str:
    return " ".join(text.split()[start:end])


@pytest.fixture(autouse=True)
def without_meteor(monkeypatch):
    """Segment logic is metric-agnostic; METEOR's own values are tested against nltk elsewhere."""
    monkeypatch.setattr(metrics, "wordnet_unavailable_reason", lambda: "not needed here")


def test_windows_cover_up_to_the_maximum():
    assert windows(50, 300) == [(0, 50), (50, 100), (100, 150), (150, 200), (200, 250), (250, 300)]
    assert windows(40, 100) == [(0, 40), (40, 80), (80, 100)]
    with pytest.raises(ValueError, match="positive"):
        windows(0, 300)


def test_short_references_count_only_in_the_windows_they_reach():
    references = [words(120), words(40), words(260), words(400)]
    predictions = [words(120), words(40, offset=3), words(70), words(400)]
    frame = position_scores(predictions, references, width=50, max_len=300)
    counts = frame.drop_duplicates("segment_start").set_index("segment_start")["count"]
    assert counts.to_dict() == {0: 4, 50: 3, 100: 3, 150: 2, 200: 2, 250: 2}
    assert set(frame["metric"]) == {"bleu", "rouge1", "rougeL"}  # no METEOR rows without WordNet
    # the 100-150 window holds samples 0, 2 (whose prediction stopped at 70 words: empty) and 3
    reaching = (0, 2, 3)
    assert cut(predictions[2], 100, 150) == ""
    expected = metrics.score_texts(
        [cut(predictions[i], 100, 150) for i in reaching], [cut(references[i], 100, 150) for i in reaching]
    )
    window = frame[frame["segment_start"] == 100].set_index("metric")["value"]
    assert window.to_dict() == pytest.approx({name: expected[name] for name in ("bleu", "rouge1", "rougeL")})


@pytest.mark.parametrize("predictions", [["", ""], [words(10), "   "]])
def test_empty_or_ended_predictions_score_zero(predictions):
    frame = position_scores(predictions, [words(30), words(80)], width=20, max_len=100)
    late = frame[frame["segment_start"] >= 20]
    assert not late.empty and (late["value"] == 0).all()


def test_token_windows_use_the_generator_tokenizer(tokenizer):
    text = "the battery lasts two days and the screen is bright in sunlight " * 6
    units = text_units("tokens", tokenizer)
    length = len(tokenizer.encode(text, add_special_tokens=False))
    frame = position_scores([text, ""], [text, text], width=16, max_len=64, units=units)
    assert length > 64 and list(frame["segment_start"].unique()) == [0, 16, 32, 48]
    assert (frame["count"] == 2).all()
    # per window: one prediction decodes to exactly its reference window (F = 1), one is empty (F = 0)
    assert frame[frame["metric"] == "rouge1"]["value"].tolist() == pytest.approx([0.5] * 4)
    with pytest.raises(ValueError, match="needs the Generator's tokenizer"):
        text_units("tokens")
    with pytest.raises(ValueError, match="segment_unit"):
        text_units("characters")


def write_predictions(path, rows) -> None:
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")


def test_evaluate_predictions_file(tmp_path):
    rows = [
        {"id": f"s{i}", "prediction": words(30 + 20 * i, offset=i), "reference": words(60 + 15 * i)} for i in range(8)
    ]
    rows += [
        {"id": "s0", "prediction": "a repeat from a padded DDP shard", "reference": rows[0]["reference"]},
        {"id": "s9", "prediction": None, "reference": words(20)},
    ]
    write_predictions(tmp_path / "predictions.jsonl", rows)
    overall, frame = evaluate_predictions(
        tmp_path / "predictions.jsonl", segment_width=50, segment_max=300, n_bootstrap=30, seed=0
    )
    unique = rows[:8] + rows[-1:]
    predictions, references = [r["prediction"] or "" for r in unique], [r["reference"] for r in unique]
    assert overall == metrics.score_texts(predictions, references, n_bootstrap=30, seed=0, bertscore_model="")
    assert (
        overall["empty"] == 1
        and overall["bertscore"] is None
        and "eval.bertscore_model" in overall["bertscore_unavailable"]
    )  # reported unavailable when no model is given
    # each window with its own seeded bootstrap interval, as the overall scores
    pd.testing.assert_frame_equal(frame, position_scores(predictions, references, 50, 300, n_bootstrap=30, seed=0))
    assert ((frame["ci_low"] <= frame["value"]) & (frame["value"] <= frame["ci_high"])).all()


def test_predictions_file_errors_name_the_line(tmp_path):
    write_predictions(tmp_path / "bad.jsonl", [{"id": 1, "prediction": "x", "reference": "y"}, {"id": 2}])
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing \['prediction', 'reference'\]"):
        read_predictions(tmp_path / "bad.jsonl")


def two_runs() -> pd.DataFrame:
    references = [words(90), words(160)]
    return pd.concat(
        [
            position_scores([words(90), words(40)], references).assign(run="sft"),
            position_scores(references, references).assign(run="flythinker"),
        ]
    )


def test_position_eval_files_plot_and_tables(tmp_path):
    frame = two_runs()
    files = save_position_eval(frame, tmp_path)
    assert files.csv == tmp_path / CSV_NAME and files.png == tmp_path / PNG_NAME
    pd.testing.assert_frame_equal(pd.read_csv(files.csv), frame.reset_index(drop=True))
    assert files.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = plot_position_eval(frame).axes
    labelled = [[line.get_label() for line in axis.lines if not line.get_label().startswith("_")] for axis in axes]
    assert labelled == [["sft", "flythinker"]] * 4  # 3 metrics + counts, 2 runs
    table = segment_table(frame)
    assert list(table.index) == ["0-50", "50-100", "100-150", "150-200"]
    assert list(table.columns[:2]) == ["bleu (sft)", "bleu (flythinker)"]
    assert table["count (sft)"].tolist() == [2, 2, 1, 1]
    assert table.loc["0-50", "rouge1 (flythinker)"] == pytest.approx(1.0)


def test_comparison_table_orders_metrics_then_intervals():
    scores = {
        "sft": metrics.score_texts([words(20)], [words(25)], n_bootstrap=10),
        "flythinker": metrics.score_texts([words(25)], [words(25)], n_bootstrap=10),
    }
    table = comparison_table(scores)
    assert list(table.index) == ["sft", "flythinker"]
    assert list(table.columns[:5]) == ["count", *metrics.METRICS] and "bleu_ci_low" in table
    assert table.loc["flythinker", "bleu"] == pytest.approx(100.0) and "meteor_unavailable" not in table
    assert "| sft" in table.to_markdown()
