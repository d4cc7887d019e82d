"""The command: the sections in order, each on its budget, a failure recorded and the next one run; the
environment they ran in; the JSON and markdown report, written after every section."""

from __future__ import annotations

import platform
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import pandas as pd
import peft
import torch
import transformers

from ...measure import release
from ...models.architectures import ARCHITECTURES
from .. import write_json
from .decode import check_decode
from .parity import check_parity
from .plan import PLANS, Plan, failure, section_deadline
from .scaleout import check_ddp, check_two_gpu
from .train import check_train

SECTIONS = {
    "parity": check_parity,
    "train": check_train,
    "decode": check_decode,
    "two_gpu": check_two_gpu,
    "ddp": check_ddp,
}


def environment(device: torch.device, sizes: str) -> dict:
    from ...lit.rundirs import git_commit

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sizes": sizes,
        "device": name,
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "cpu threads": torch.get_num_threads(),
        "git commit": git_commit(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(
            {
                "gpu memory GB": round(properties.total_memory / 2**30, 1),
                "compute capability": f"{properties.major}.{properties.minor}",
                "tf32 matmul": torch.backends.cuda.matmul.allow_tf32,
            }
        )
    elif Path("/dev/nvidia0").exists() or Path("/dev/nvidiactl").exists():
        info["note"] = (
            "an NVIDIA device is present but this torch has no CUDA (a CPU build?): install a CUDA "
            "build of torch to check the GPU"
        )
    return info


def run_section(name: str, plan: Plan, device: torch.device) -> dict:
    start = time.perf_counter()
    try:
        result = SECTIONS[name](plan, device, section_deadline(plan.budgets.get(name, 60)))
    except Exception as error:  # CUDA OOM included: record it, release memory, go on
        result = {"status": failure(error), "traceback": traceback.format_exc(limit=8)}
    release(device)
    return {**result, "seconds": round(time.perf_counter() - start, 1)}


def gpu_check(out: str = "bench/gpu_check.json", sizes: str = "", only: Optional[list[str]] = None) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = sizes or ("paper" if device.type == "cuda" else "tiny")
    unknown = sorted(set(only or []) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    plan = PLANS[sizes]
    start = time.perf_counter()
    report = {
        "environment": environment(device, sizes),
        "architectures": {name: ARCHITECTURES[name] for name in (plan.generator, *plan.reasoners)},
        "sections": {},
    }
    for name in SECTIONS:
        if only and name not in only:
            continue
        print(f"gpu-check: {name} ...", flush=True)
        report["sections"][name] = run_section(name, plan, device)
        print(
            f"gpu-check: {name}: {report['sections'][name]['status']} ({report['sections'][name]['seconds']} s)",
            flush=True,
        )
        report["total seconds"] = round(time.perf_counter() - start, 1)
        write_json(out, report)  # after every section: a run cut short still leaves what it measured
        Path(out).with_suffix(".md").write_text(markdown(report))
    return report


def _table(rows: list[dict]) -> str:
    frame = pd.DataFrame(rows)
    return frame.astype(object).where(frame.notna(), None).to_markdown(index=False, floatfmt=".4g", missingval="")


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"# gpu-check: {env['device']}, {env['date']}",
        "",
        f"torch {env['torch']} (CUDA {env['cuda']}), transformers {env['transformers']}, peft {env['peft']}; "
        f"sizes: {env['sizes']} ({', '.join(report['architectures'])}); commit {env['git commit']}; "
        f"total {report['total seconds']} s",
        "",
    ]
    if "note" in env:
        lines += [f"**Note:** {env['note']}", ""]
    lines += [
        _table(
            [
                {"section": name, "status": s["status"], "seconds": s["seconds"]}
                for name, s in report["sections"].items()
            ]
        ),
        "",
    ]
    for name, section in report["sections"].items():
        lines += [f"## {name}: {section['status']}", ""]
        if "setting" in section:
            lines += ["; ".join(f"{k}: {v}" for k, v in section["setting"].items()), ""]
        if "tolerances" in section:
            lines += [
                f"tolerance: {section['tolerance_meaning']} <= "
                + ", ".join(f"{v:g} ({k})" for k, v in section["tolerances"].items()),
                "",
            ]
        if section.get("rows"):
            lines += [_table(section["rows"]), ""]
    return "\n".join(lines)
