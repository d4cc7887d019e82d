"""User and temporal splits of per-user histories (LongLaMP's two settings), shared by the
synthetic generator and the real-data converter."""

from __future__ import annotations

import random
from typing import Callable

# make_record(user_id, index of the target in the user's history, target item, profile items)
MakeRecord = Callable[[str, int, dict, list[dict]], dict]


def split_users(
    users: dict[str, list[dict]], setting: str, seed: int, make_record: MakeRecord
) -> dict[str, list[dict]]:
    """`users`: each user's items in chronological order.

    user: whole users go to train/val/test (80/10/10, seeded), each item a record whose profile is
    the user's other items. temporal: every user in every split; the latest item is test, the one
    before val, earlier items train, each with the items before it as profile."""
    splits = {"train": [], "val": [], "test": []}
    if setting == "user":
        order = sorted(users)
        random.Random(f"split-{seed}").shuffle(order)
        n_val = n_test = max(1, len(order) // 10)
        assignment = {
            u: "test" if i < n_test else "val" if i < n_test + n_val else "train" for i, u in enumerate(order)
        }
        for user_id in sorted(users):
            items = users[user_id]
            for index, target in enumerate(items):
                others = items[:index] + items[index + 1 :]
                splits[assignment[user_id]].append(make_record(user_id, index, target, others))
    elif setting == "temporal":
        for user_id in sorted(users):
            items = users[user_id]
            last = len(items) - 1
            for index in range(1, len(items)):
                split = "test" if index == last else "val" if index == last - 1 else "train"
                splits[split].append(make_record(user_id, index, items[index], items[:index]))
    else:
        raise ValueError(f"unknown setting {setting!r}; choose user or temporal")
    return splits
