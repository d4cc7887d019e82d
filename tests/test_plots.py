"""Plots a reader can trust: lines named and coloured by method (sweeps: point and seeds), units on
the axes, intervals as bands, the outputs' own counts per window, windows over few samples marked, one
legend, a title with the split and the runs, one TensorBoard image per panel."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from flythinker_pl.config import EvalConfig
from flythinker_pl.evaluation import metrics
from flythinker_pl.evaluation.gaps import plot_gaps, plot_segment_gaps
from flythinker_pl.evaluation.palette import METHOD_COLOURS, line_styles
from flythinker_pl.evaluation.report import (
    CSV_NAME,
    MIN_SAMPLES,
    plot_position_eval,
    position_panels,
    save_position_eval,
)
from flythinker_pl.evaluation.segments import TextUnits, position_scores
from flythinker_pl.lit.evaluate import evaluate_run, run_labels, runs_segments
from flythinker_pl.evaluation.sweep_report import (
    plot_lambda_sweep,
    plot_metrics,
    plot_versus,
    segments_frame,
    summary_table,
)
from matplotlib.colors import to_hex

PANELS = ["bleu", "rouge1", "rougeL", "samples"]


@pytest.fixture(autouse=True)
def without_meteor(monkeypatch):
    monkeypatch.setattr(metrics, "wordnet_unavailable_reason", lambda: "not needed here")


def text(count: int) -> str:
    return " ".join(f"w{i % 7}" for i in range(count))


def scores(unit: str = "words", output_words: int = 60, n_bootstrap: int = 0) -> pd.DataFrame:
    """12 references reach the first two windows of 50, 2 the last two: counts 12, 12, 2, 2."""
    references = [text(100)] * 10 + [text(200)] * 2
    units = TextUnits(str.split, " ".join, unit)  # words cut as if they were tokens: only the label differs
    return position_scores([text(output_words)] * 12, references, units=units, n_bootstrap=n_bootstrap)


def legend_texts(legend) -> list[str]:
    return [label.get_text() for label in legend.get_texts()]


def test_lines_are_labelled_coloured_by_method_and_windows_with_few_samples_are_hollow():
    frame = pd.concat(
        [
            scores().assign(run="demo_sft/version_0", label="sft", method="sft"),
            scores(output_words=160).assign(run="demo/version_0", label="flythinker", method="flythinker"),
        ]
    )
    figure = plot_position_eval(frame, "test split: sft vs flythinker")
    axes = figure.axes
    assert len(axes) == len(PANELS) and figure.get_suptitle() == "test split: sft vs flythinker"
    (legend,) = figure.legends  # one legend for the figure, not one panel's
    assert legend_texts(legend) == [
        "sft",
        "flythinker",
        "references reaching the window",
        f"fewer than {MIN_SAMPLES} samples",
    ]
    assert all(axis.get_xlabel() == "position in output (words)" for axis in axes)
    assert [axis.get_ylabel() for axis in axes] == [
        "BLEU (0-100)",
        "ROUGE-1 F1 (0-1)",
        "ROUGE-L F1 (0-1)",
        "outputs reaching window",
    ]
    line, hollow = axes[0].lines[:2]  # the sft line, then its low-count windows
    assert (
        to_hex(line.get_color()) == METHOD_COLOURS["sft"]
        and to_hex(axes[0].lines[2].get_color()) == METHOD_COLOURS["flythinker"]
    )
    assert list(line.get_xdata()) == [25, 75, 125, 175] and line.get_markevery() == [True, True, False, False]
    assert hollow.get_markerfacecolor() == "none" and list(hollow.get_xdata()) == [125, 175]
    assert hollow.get_linestyle() == "None" and hollow.get_color() == line.get_color()
    references, sft_outputs, _, _, fly_outputs = axes[-1].lines[:5]
    assert list(references.get_ydata()) == [12, 12, 2, 2] and references.get_linestyle() == "--"
    assert list(sft_outputs.get_ydata()) == [12, 12, 0, 0]  # the outputs themselves: sft stops at 60 words
    assert list(fly_outputs.get_ydata()) == [12, 12, 12, 12]


def test_intervals_are_bands_and_the_legend_says_so():
    frame = scores(n_bootstrap=50).assign(method="flythinker")
    assert frame[["ci_low", "ci_high"]].notna().all().all() and (frame["ci_low"] <= frame["value"]).all()
    figure = plot_position_eval(frame)
    (band,) = figure.axes[1].collections  # rouge1: one band, the line's colour
    assert to_hex(band.get_facecolor()[0]) == METHOD_COLOURS["flythinker"]
    assert "95% bootstrap interval" in legend_texts(figure.legends[0])
    assert not plot_position_eval(scores()).axes[1].collections  # no interval scored: no band


def test_unit_comes_from_the_frame_and_old_csvs_without_it_still_plot():
    assert plot_position_eval(scores("tokens")).axes[0].get_xlabel() == "position in output (tokens)"
    old = scores().drop(columns="unit")
    assert plot_position_eval(old).axes[0].get_xlabel() == "position in output"
    assert legend_texts(plot_position_eval(old.assign(count=50)).legends[0]) == ["references reaching the window"]


def test_panels_are_single_figures_readable_at_tensorboard_size():
    figures = position_panels(scores().assign(method="sft"), "sft (demo_sft/version_0)")
    assert list(figures) == PANELS
    for panel, figure in figures.items():
        assert len(figure.axes) == 1 and figure.get_size_inches()[0] <= 6
        assert figure.axes[0].get_title().startswith("sft (demo_sft/version_0): ")
        assert figure.axes[0].get_legend() is not None
    assert to_hex(figures["bleu"].axes[0].lines[0].get_color()) == METHOD_COLOURS["sft"]


def fake_run(root, experiment: str, method: str | None, in_metrics: bool = True):
    run_dir = root / experiment / "version_0"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({"method": method} if in_metrics and method else {}))
    if method and not in_metrics:
        (run_dir / "config.yaml").write_text(f"method: {method}\nseed: 0\n")
    save_position_eval(scores(), run_dir)
    return run_dir


def test_runs_are_labelled_by_method_and_by_run_where_methods_repeat(tmp_path):
    sft, fly, fly_again = (
        fake_run(tmp_path, "demo_sft", "sft"),
        fake_run(tmp_path, "demo", "flythinker"),
        fake_run(tmp_path, "demo_lam1", "flythinker", in_metrics=False),
    )
    unknown = fake_run(tmp_path, "elsewhere", None)
    assert run_labels([sft, fly, fly_again, unknown]) == {
        "demo_sft/version_0": "sft",
        "demo/version_0": "flythinker (demo/version_0)",
        "demo_lam1/version_0": "flythinker (demo_lam1/version_0)",
        "elsewhere/version_0": "elsewhere/version_0",
    }
    assert run_labels([sft, fly]) == {"demo_sft/version_0": "sft", "demo/version_0": "flythinker"}

    runs_segments([sft, fly], tmp_path / "compare")
    combined = pd.read_csv(tmp_path / "compare" / CSV_NAME)
    assert list(dict.fromkeys(combined["run"])) == ["demo_sft/version_0", "demo/version_0"]  # meaning kept
    assert list(dict.fromkeys(combined["label"])) == ["sft", "flythinker"]
    assert list(dict.fromkeys(combined["method"])) == ["sft", "flythinker"]
    assert "sft" in legend_texts(plot_position_eval(combined).legends[0])
    # TensorBoard: the comparison is a run of its own, one image per panel with every run on one axis
    events = EventAccumulator(str(tmp_path / "compare"), size_guidance={"images": 0}).Reload()
    assert sorted(events.Tags()["images"]) == sorted(f"position_eval/test/{panel}" for panel in PANELS)


def test_evaluate_run_writes_one_tensorboard_image_per_panel(tmp_path):
    run_dir = tmp_path / "demo" / "version_0"
    run_dir.mkdir(parents=True)
    rows = [{"id": i, "prediction": text(60), "reference": text(100 if i < 10 else 200)} for i in range(12)]
    (run_dir / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    evaluate_run(run_dir / "predictions.jsonl", EvalConfig(n_bootstrap=0))
    images = EventAccumulator(str(run_dir), size_guidance={"images": 0}).Reload()  # method unknown: the run dir
    assert sorted(images.Tags()["images"]) == sorted(f"position_eval/test/{panel}" for panel in PANELS)
    for panel in PANELS:
        (image,) = images.Images(f"position_eval/test/{panel}")
        assert image.width <= 800 and image.height <= 600  # one panel, shown near full size
    assert pd.read_csv(run_dir / CSV_NAME)["unit"].eq("words").all()


def sweep_runs(tmp_path) -> pd.DataFrame:
    """Two points: lam=0.5 over seeds 0 and 1, sft over seed 0 only."""
    rows = []
    for point, seed, lam, bleu in [
        ("fusion.lam=0.5", 0, 0.5, 10.0),
        ("fusion.lam=0.5", 1, 0.5, 14.0),
        ("sft", 0, None, 8.0),
    ]:
        run_dir = tmp_path / point / f"seed={seed}"
        save_position_eval(scores(), run_dir)
        rows.append(
            {
                "point": point,
                "seed": seed,
                "fusion.lam": lam,
                "run_dir": str(run_dir),
                "method": "sft" if point == "sft" else "flythinker",
                "test/bleu": bleu,
                "val/loss": bleu / 10,
                "lambda_sweep/val_loss@0": bleu / 5,
            }
        )
    return pd.DataFrame(rows)


def test_sweep_plots_name_points_seeds_units_and_show_spread_only_where_computed(tmp_path):
    runs = sweep_runs(tmp_path)
    frame = segments_frame(runs)
    legend = legend_texts(plot_position_eval(frame).legends[0])
    assert legend[:2] == ["fusion.lam=0.5, mean of 2 seeds", "sft, seed 0"]
    assert set(frame["unit"]) == {"words"}
    assert dict(zip(frame["run"], frame["method"])) == {"fusion.lam=0.5": "flythinker", "sft": "sft"}

    assert summary_table(runs, ["method", "fusion.lam"]).columns.is_unique  # method as a grid key: one column
    table = summary_table(runs, ["fusion.lam"])
    panels = dict(zip(["val/loss", "test/bleu"], plot_metrics(table).axes))
    assert panels["test/bleu"].get_ylabel() == "test BLEU (0-100)"
    assert panels["val/loss"].get_ylabel() == "val/loss (nats/token)"
    ticks = [tick.get_text() for tick in panels["test/bleu"].get_xticklabels()]
    assert ticks == ["fusion.lam=0.5 (n=2)", "sft (n=1)"]
    bars = [bar for bar in panels["test/bleu"].collections[0].get_segments() if len(bar)]  # sft: one seed, no bar
    assert len(bars) == 1 and bars[0][:, 1].tolist() == pytest.approx([12 - 2**1.5, 12 + 2**1.5])

    versus = plot_versus(table, "fusion.lam", ["fusion.lam"]).axes[1]
    assert versus.get_xlabel() == "fusion.lam" and versus.get_ylabel() == "test BLEU (0-100)"
    assert not versus.patches  # sft's reference line has no band: one seed, no std
    assert to_hex(versus.lines[-1].get_color()) == METHOD_COLOURS["sft"]  # the reference, in sft's colour
    table.loc["sft", "test/bleu_std"] = 1.0
    (band,) = plot_versus(table, "fusion.lam", ["fusion.lam"]).axes[1].patches
    assert (band.get_y(), band.get_height()) == (7.0, 2.0)
    lam = plot_lambda_sweep(table, "Sweep `lambda`").axes[0]
    assert legend_texts(lam.get_legend()) == ["fusion.lam=0.5 (n=2)", "sft (n=1)"] and "nats/token" in lam.get_ylabel()
    assert lam.figure.get_suptitle().startswith("Sweep `lambda`")


def test_one_colour_per_method_in_every_plot():
    assert [style["color"] for style in line_styles(["sft", "flythinker", "flythinker", None, "probe-x"])] == [
        METHOD_COLOURS["sft"],
        METHOD_COLOURS["flythinker"],
        METHOD_COLOURS["flythinker"],
        "#228833",
        "#aa3377",
    ]
    styles = line_styles(["flythinker", "flythinker"])
    assert styles[0]["linestyle"] != styles[1]["linestyle"]  # two points of one method stay apart
    gaps = pd.DataFrame(
        {"reference": ["sft", "sft"], "bleu_gap": [1.0, 2.0], "bleu_ci_low": [0.0, 1.0], "bleu_ci_high": [2.0, 3.0]},
        index=["flythinker", "static"],
    )
    axis = plot_gaps(gaps, {"flythinker": "flythinker", "static": "static"}, "Sweep `baselines`").axes[0]
    assert [to_hex(bar.lines[0].get_color()) for bar in axis.containers] == [
        METHOD_COLOURS["flythinker"],
        METHOD_COLOURS["static"],
    ]
    windows = pd.DataFrame({"flythinker": [1.0, 2.0]}, index=["0-50", "50-100"])
    line = plot_segment_gaps(windows, methods={"flythinker": "flythinker"}).axes[0].lines[0]
    assert to_hex(line.get_color()) == METHOD_COLOURS["flythinker"]
