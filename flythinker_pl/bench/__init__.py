"""Benchmarks: commands that print a table of side-by-side ratios and write JSON (never timed tests)."""
from __future__ import annotations

import json
from pathlib import Path

from ..decoding.generate import synchronize  # noqa: F401  (re-exported for the benchmarks)

def write_json(path: str | Path, payload: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")
