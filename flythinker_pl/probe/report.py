"""probe.csv's numbers as tables and plots: accuracy per response window, and latent trajectories."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global figure state, no display backend
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from .features import RunFeatures
from .fit import held_out_rows


def line_name(frame: pd.DataFrame) -> pd.Series:
    return frame["label"] + " " + frame["source"]


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per attribute; per run/source "first -> last window" accuracy, and chance likewise."""
    windows = list(dict.fromkeys(frame["window"]))
    ends = frame[frame["window"].isin([windows[0], windows[-1]])].assign(line=line_name)
    cells = ends.pivot_table(index=["attribute", "line"], columns="window", values="accuracy", sort=False)
    chance = ends.pivot_table(index="attribute", columns="window", values="chance", aggfunc="first", sort=False)
    arrow = lambda t: t[windows[0]].map("{:.2f}".format) + " -> " + t[windows[-1]].map("{:.2f}".format)  # noqa: E731
    table = arrow(cells).unstack("line").reindex(columns=list(dict.fromkeys(ends["line"])))
    table["chance"] = arrow(chance)
    return table.reindex(list(dict.fromkeys(frame["attribute"]))).rename_axis(
        f"accuracy at response position {windows[0]} -> {windows[-1]}"
    )


def markdown(frame: pd.DataFrame) -> str:
    """A table per attribute: accuracy [95% interval over held-out users] per window, chance below."""
    parts = [
        "# Linear probes: what the hidden states know about held-out users\n",
        "Accuracy on held-out users' records [95% bootstrap interval over users]; chance: always "
        "answering the training users' majority class (held-out users may lack it: see 1 / classes). "
        "Windows are response positions (tokens; 0 = the prompt's last token, before any response "
        "token is read).\n",
    ]
    for attribute, rows in frame.groupby("attribute", sort=False):
        cell = rows.assign(
            line=line_name,
            text=rows["accuracy"].map("{:.2f}".format)
            + " ["
            + rows["ci_low"].map("{:.2f}".format)
            + ", "
            + rows["ci_high"].map("{:.2f}".format)
            + "]",
        )
        table = cell.pivot(index="line", columns="window", values="text").reindex(
            index=list(dict.fromkeys(cell["line"])), columns=list(dict.fromkeys(rows["window"]))
        )
        by_window = rows.groupby("window", sort=False)
        table.loc["chance"] = by_window["chance"].first().map("{:.2f}".format)
        table.loc["1 / classes"] = (1 / by_window["classes"].first()).map("{:.2f}".format)
        parts.append(f"## {attribute}\n\n{table.rename_axis(None).to_markdown()}\n")
    return "\n".join(parts)


def plot_vs_position(frame: pd.DataFrame) -> Figure:
    """One panel per attribute: accuracy per window, a line per run/source with its interval; chance dashed."""
    attributes, windows = list(dict.fromkeys(frame["attribute"])), list(dict.fromkeys(frame["window"]))
    columns = min(4, len(attributes))
    rows_ = -(-len(attributes) // columns)
    figure = Figure(figsize=(4.2 * columns, 3.2 * rows_ + 0.6), layout="constrained")
    axes = figure.subplots(rows_, columns, squeeze=False).ravel()
    for axis, attribute in zip(axes, attributes):
        rows = frame[frame["attribute"] == attribute].assign(line=line_name)
        for line, points in rows.groupby("line", sort=False):
            x = [windows.index(w) for w in points["window"]]
            axis.plot(x, points["accuracy"], marker="o", label=line)
            axis.fill_between(x, points["ci_low"], points["ci_high"], alpha=0.15)
        chance = rows.groupby("window", sort=False)["chance"].first()
        axis.plot([windows.index(w) for w in chance.index], chance, "k--", label="chance")
        axis.set(title=attribute, ylim=(0, 1.02), xticks=range(len(windows)))
        axis.set_xticklabels(windows, rotation=45, fontsize=7)
    for axis in axes[len(attributes) :]:
        axis.set_visible(False)
    axes[0].legend(fontsize=7)
    figure.supxlabel("response position window (tokens read)")
    figure.supylabel("probe accuracy on held-out users")
    return figure


def user_trajectories(run: RunFeatures, source: str, labels: dict[str, str]):
    """(held-out users' 2-D trajectories [users, windows, 2], their classes): per-window means over
    each user's records, less the training users' mean of that window (the drift every user shares
    along the response would be the first components), projected by a PCA fitted on training users."""
    train, held_out = held_out_rows(run.records)
    values = run.features[source]
    windows, d = values.shape[1:]

    def user_means(rows: np.ndarray) -> pd.DataFrame:  # NaN-skipping: the records reaching each window
        return pd.DataFrame(values[rows].reshape(rows.sum(), -1)).groupby(run.records["user"][rows].to_numpy()).mean()

    fitted, shown = user_means(train), user_means(held_out)
    centre = fitted.mean().to_numpy().reshape(windows, d)  # NaN (no warning) for windows no one reaches
    points = (fitted.to_numpy().reshape(-1, windows, d) - centre).reshape(-1, d)
    points = points[~np.isnan(points).any(1)]
    scaler = StandardScaler().fit(points)
    pca = PCA(2).fit(scaler.transform(points))
    trajectories = np.full((len(shown), windows, 2), np.nan)
    for u, row in enumerate(shown.to_numpy().reshape(-1, windows, d) - centre):
        reached = ~np.isnan(row).any(1)
        trajectories[u, reached] = pca.transform(scaler.transform(row[reached]))
    return trajectories, [labels[user] for user in shown.index]


def plot_pca(panels: list[tuple[str, np.ndarray, list[str]]], attribute: str) -> Figure:
    """One panel per run/source: a line per held-out user, start (circle) to end (cross), coloured by class."""
    classes = sorted({c for _, _, users in panels for c in users})
    colours = {c: f"C{i % 10}" for i, c in enumerate(classes)}
    figure = Figure(figsize=(4.2 * len(panels), 4.2), layout="constrained")
    for axis, (title, trajectories, users) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for path, cls in zip(trajectories, users):
            path = path[~np.isnan(path).any(1)]
            axis.plot(path[:, 0], path[:, 1], color=colours[cls], alpha=0.7, lw=1)
            axis.plot(*path[0], "o", color=colours[cls], ms=4)
            axis.plot(*path[-1], "x", color=colours[cls], ms=5)
        axis.set(title=title, xlabel="PC 1", ylabel="PC 2")
    handles = [figure.axes[0].plot([], [], color=colours[c], label=c)[0] for c in classes]
    figure.legend(handles=handles, title=attribute, loc="outside right upper", fontsize=7)
    figure.suptitle(
        "held-out users' mean hidden state per response window, less the training users' mean "
        "of the window (o: position 0, x: last window); PCA fitted on training users",
        fontsize=9,
    )
    return figure
