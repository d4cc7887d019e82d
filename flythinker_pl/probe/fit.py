"""Linear probes: one per (source, attribute, window), fitted on the records of the training users,
scored on the records of users it never saw, beside the chance level and a bootstrap interval
over held-out users (a user's records share one label, so records are not independent draws)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from ..data.schema import DataError
from .features import RunFeatures

C = 0.1  # L2 strength, fixed in advance (never tuned on held-out users): ~10^2-10^3 records per probe


def make_probe(c: float = C):
    """Standardisation (its means and scales from the training records too) + multinomial logistic regression."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))


def held_out_rows(records: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows): records of the train split, and those of the other splits'
    users who have no training record (the data.setting=temporal splits share users)."""
    train = (records["split"] == "train").to_numpy()
    held_out = ~train & ~records["user"].isin(set(records["user"][train])).to_numpy()
    if not held_out.any():
        raise DataError(
            f"no held-out user: every user of the {', '.join(sorted(set(records['split'][~train])))} "
            "split(s) also has training records; probe runs with data.setting=user"
        )
    return train, held_out


def user_bootstrap(correct: np.ndarray, users: np.ndarray, n_bootstrap: int, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of accuracy over resampled held-out users (each with all their records)."""
    if n_bootstrap <= 0:
        return float("nan"), float("nan")
    _, index = np.unique(users, return_inverse=True)
    hits, counts = np.bincount(index, weights=correct), np.bincount(index)
    draws = np.random.default_rng(seed).integers(0, len(counts), (n_bootstrap, len(counts)))
    low, high = np.percentile(hits[draws].sum(1) / counts[draws].sum(1), [2.5, 97.5])
    return float(low), float(high)


def score_probe(train_x, train_y, train_users, test_x, test_y, test_users, n_bootstrap: int, c: float = C) -> dict:
    """Accuracy on the held-out records, its interval, and chance: the accuracy of always answering the
    training users' majority class (few held-out users may lack it: compare with 1 / classes too)."""
    if set(train_users) & set(test_users):
        raise ValueError("a probe must be scored on users it was not fitted on")
    correct = make_probe(c).fit(train_x, train_y).predict(test_x) == test_y
    per_user = pd.Series(train_y, index=train_users).groupby(level=0).first()
    majority = per_user.value_counts().idxmax()
    low, high = user_bootstrap(correct, test_users, n_bootstrap)
    return {
        "accuracy": float(correct.mean()),
        "ci_low": low,
        "ci_high": high,
        "chance": float((test_y == majority).mean()),
        "n_train": len(train_y),
        "n_test": len(test_y),
        "n_test_users": len(set(test_users)),
        "classes": len(per_user.unique()),
    }


def probe_run(
    run: RunFeatures, labels: dict[str, dict[str, str]], windows: list[str], n_bootstrap: int = 1000
) -> pd.DataFrame:
    """One row per (source, attribute, window) with enough data: two classes among the training users."""
    with threadpool_limits(1):  # small problems: BLAS threads cost ~6x more than they save here
        return pd.DataFrame(_probe_rows(run, labels, windows, n_bootstrap))


def _probe_rows(run: RunFeatures, labels: dict[str, dict[str, str]], windows: list[str], n_bootstrap: int):
    train, held_out = held_out_rows(run.records)
    users = run.records["user"].to_numpy()
    rows = []
    for attribute, by_user in labels.items():
        missing = sorted(set(users) - set(by_user))
        if missing:
            raise DataError(
                f"users.jsonl has no latent truth for {len(missing)} users of the records, "
                f"e.g. {missing[:3]}: it belongs to another data set"
            )
        y = np.array([by_user[user] for user in users])
        for source, values in run.features.items():
            for w, window in enumerate(windows):
                reached = ~np.isnan(values[:, w, 0])
                fit_rows, test_rows = train & reached, held_out & reached
                if not test_rows.any() or len(set(y[fit_rows])) < 2:
                    continue
                score = score_probe(
                    values[fit_rows, w],
                    y[fit_rows],
                    users[fit_rows],
                    values[test_rows, w],
                    y[test_rows],
                    users[test_rows],
                    n_bootstrap,
                )
                rows.append({"source": source, "attribute": attribute, "window": window, **score})
    return rows
