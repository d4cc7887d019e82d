"""`flythinker gpu-check` at tiny sizes on CPU: the script behind `make gpu-check` runs every section,
reports each one, and keeps going when one fails (the CUDA numbers themselves need a GPU)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flythinker_pl.bench.gpu import decode as decode_section, report
from flythinker_pl.bench.gpu.decode import DECODE_VARIANTS
from flythinker_pl.bench.gpu.plan import PLANS
from flythinker_pl.bench.gpu.scaleout import check_ddp
from flythinker_pl.cli import main

PARITY_CHECKS = {
    "flythinker: teacher-forced == incremental (sequential)",
    "flythinker: teacher-forced == incremental (staggered)",
    "sft: teacher-forced == incremental",
    "flythinker: greedy tokens staggered == sequential",
    "lambda = 0 == sft: teacher-forced logits",
    "lambda = 0 == sft: greedy tokens (staggered vs sft)",
    "latents move the logits (the checks above can see a misplaced one)",
    "shared base: teacher-forced == incremental (sequential)",
    "shared base: teacher-forced == incremental (shared)",
    "shared base: greedy tokens shared == sequential",
    "LoRA adapters move the logits (a wrong adapter would show)",
}


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow  # a minute of every section end to end (and timings that need a quiet machine): CI runs it
def test_gpu_check_runs_every_section_at_tiny_sizes_and_reports_it(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert main(["gpu-check", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    environment = report["environment"]
    assert environment["sizes"] == "tiny" and environment["date"] and environment["torch"] == torch.__version__
    assert set(report["architectures"]) == {"tiny-3B", "tiny-0.5B", "tiny-1.5B"}
    sections = report["sections"]
    assert list(sections) == ["parity", "train", "decode", "two_gpu", "ddp"]
    assert all(positive(s["seconds"]) for s in sections.values())

    parity = sections["parity"]
    assert parity["status"] == "ok", parity["rows"]
    assert {(r["check"], r["dtype"]) for r in parity["rows"]} == {
        (check, dtype) for check in PARITY_CHECKS for dtype in ("float32", "bfloat16")
    }
    exact = [r for r in parity["rows"] if r["check"].startswith("lambda = 0")]
    assert all(r["value"] in (0, 1) for r in exact)  # logits bit-equal, tokens all equal
    assert parity["tolerances"] == {"cpu/float32": 1e-5, "cpu/bfloat16": 1e-1}

    train = sections["train"]
    assert train["status"] == "ok", train["rows"]
    assert [r["variant"] for r in train["rows"]] == [
        "sft",
        *(f"flythinker {size} {mode}" for size in ("0.5B", "1.5B") for mode in ("frozen", "lora", "full")),
        "flythinker shared base",
    ]
    for row in train["rows"]:
        assert positive(row["tokens/s"]) and positive(row["ms/step"]) and positive(row["weights GB"])
        assert math.isfinite(row["loss"]) and row["peak GB"] is None  # no GPU: not measured
    assert train["rows"][0]["time / sft"] == 1.0

    decode = sections["decode"]
    assert decode["status"] == "ok", decode["rows"]
    assert [(r["method"], r["batch"]) for r in decode["rows"]] == [
        (method, batch) for batch in (1, 2) for method in DECODE_VARIANTS
    ]
    for row in decode["rows"]:
        assert positive(row["ms/token"]) and positive(row["prefill ms"]) and positive(row["tokens/s"])
    assert all(r["/ sft"] == 1.0 for r in decode["rows"] if r["method"] == "sft")
    compiled = [r for r in decode["rows"] if r["method"].endswith("(compiled)")]
    assert {r["method"] for r in compiled} == {"sft (compiled)", "flythinker sequential (compiled)"}
    assert all(positive(r["eager / compiled"]) for r in compiled)
    assert all(positive(r["compile s"]) for r in compiled if r["batch"] == 1)  # each compiles on its first shape
    assert all(positive(r["/ sequential"]) for r in decode["rows"] if r["method"].startswith("flythinker"))

    assert sections["two_gpu"]["status"] == "skipped: no CUDA device"
    assert sections["ddp"]["status"].startswith("skipped: no CUDA device")

    table = out.with_suffix(".md").read_text()
    for name, section in sections.items():
        assert f"## {name}: {section['status']}" in table
    assert "| flythinker staggered" in table and "tolerance:" in table
    assert table in capsys.readouterr().out


def test_failures_are_reported_and_the_rest_runs(tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setitem(report.SECTIONS, "parity", out_of_memory)  # a whole section fails
    monkeypatch.setattr(decode_section, "make_shared", out_of_memory)  # one model of a section fails
    out = tmp_path / "check.json"
    report.gpu_check(str(out), "tiny", only=["parity", "decode", "two_gpu"])
    sections = json.loads(out.read_text())["sections"]
    oom = "failed: CUDA out of memory: CUDA out of memory. Tried to allocate 20.00 GiB"
    assert sections["parity"]["status"] == oom and "traceback" in sections["parity"]
    decode = sections["decode"]
    assert decode["status"] == f"failed: 2 of {2 * len(DECODE_VARIANTS)} rows"
    assert [r["status"] for r in decode["rows"] if r["method"] == "flythinker shared"] == [oom, oom]
    assert all(positive(r["ms/token"]) for r in decode["rows"] if r["method"] != "flythinker shared")
    assert sections["two_gpu"]["status"] == "skipped: no CUDA device"
    assert "## parity: failed: CUDA out of memory" in out.with_suffix(".md").read_text()


@pytest.mark.slow
def test_ddp_section_keeps_replicas_identical_over_gloo():
    """The NCCL section's code, over gloo on CPU: two processes, different data, identical replicas."""
    result = check_ddp(PLANS["tiny"], torch.device("cpu"), lambda: False, backend="gloo")
    assert result["status"] == "ok", result
    assert result["rows"][0]["replicas identical"] and result["rows"][0]["weights changed"]
