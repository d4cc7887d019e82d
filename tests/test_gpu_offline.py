"""The GPU check on an offline node (README "GPU check"), as far as a CPU allows: a fresh venv holding only
what a CUDA image holds (torch, lightning, transformers, peft, pandas, tensorboard, torchmetrics, sacrebleu;
the CPU torch of constraints.txt here), then `make gpu-wheels`' folder installed by
experiments/gpu/offline_check.sh with --no-index, and the check run at tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT

IMAGE_PACKAGES = ["torch", "lightning", "transformers", "peft", "pandas", "tensorboard", "torchmetrics", "sacrebleu"]


@pytest.mark.slow  # a venv with torch (~1-2 min from pip's cache), the wheels, the check itself (~1-2 min)
def test_offline_check_runs_with_only_the_images_packages_and_the_wheels(tmp_path):
    image = tmp_path / "image"
    subprocess.run([sys.executable, "-m", "venv", str(image)], check=True)
    python = str(image / "bin" / "python")
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-c",
            str(ROOT / "constraints.txt"),
            *IMAGE_PACKAGES,
        ],
        check=True,
        timeout=1200,
    )
    missing = subprocess.run([python, "-c", "import omegaconf"], capture_output=True, text=True)
    assert missing.returncode != 0  # the image lacks what the framework needs beyond its packages
    subprocess.run(["make", "-C", str(ROOT), "gpu-wheels"], check=True, capture_output=True, timeout=600)

    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": python, "GPU_WHEELS": str(ROOT / ".gpu-wheels"), "PIP_NO_INDEX": "1"}
    env.pop("PYTHONPATH", None)
    run = subprocess.run(
        ["bash", str(ROOT / "experiments" / "gpu" / "offline_check.sh"), str(out), "--sizes", "tiny"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    sections = report["sections"]
    assert report["environment"]["sizes"] == "tiny"
    assert {name: sections[name]["status"] for name in ("parity", "train", "decode")} == {
        "parity": "ok",
        "train": "ok",
        "decode": "ok",
    }
    assert sections["two_gpu"]["status"].startswith("skipped") and sections["ddp"]["status"].startswith("skipped")
    assert (out / "gpu_check.md").read_text().startswith("# gpu-check")
