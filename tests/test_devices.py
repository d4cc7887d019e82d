"""Copies between devices (models/devices.py), checked without a GPU: which copies may be
asynchronous, when a copy to the CPU is waited for, and that the package copies through them.
Also: generate() refuses max_new_tokens=0 with a clear error."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import flythinker_pl
from flythinker_pl.config import DecodeConfig
from flythinker_pl.decoding import engines, generate as generate_module
from flythinker_pl.decoding.generate import generate
from flythinker_pl.models import devices
from flythinker_pl.models.devices import AsyncCopy, to_device

from helpers import left_padded


class FakeTensor:
    """Only what the helpers touch: a device and .to(), which logs its arguments."""

    def __init__(self, device, log):
        self.device, self.log = torch.device(device), log

    def to(self, device, non_blocking=False):
        self.log.append(("copy", f"{self.device}->{device}", non_blocking))
        return FakeTensor(device, self.log)


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's events and streams replaced by ones that log what is asked of them."""
    log = []

    class Event:
        def record(self, stream):
            log.append(("record", stream))

        def synchronize(self):
            log.append(("synchronize",))

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: f"stream of {device}")
    return log


@pytest.mark.parametrize(
    "source, target, non_blocking",
    [
        ("cpu", "cuda", True),
        ("cpu", "cuda:1", True),
        ("cuda:0", "cuda:1", True),  # queued before any reader
        ("cuda:0", "cpu", False),
        ("cuda:1", "cpu", False),  # the CPU reads at once: wait for the copy
    ],
)
def test_to_device_is_asynchronous_only_towards_cuda(source, target, non_blocking):
    log = []
    copied = to_device(FakeTensor(source, log), target)
    assert log == [("copy", f"{torch.device(source)}->{torch.device(target)}", non_blocking)]
    assert copied.device == torch.device(target)


def test_to_device_leaves_a_tensor_already_there_alone():
    log = []
    tensor = FakeTensor("cuda:0", log)
    assert to_device(tensor, "cuda:0") is tensor and log == []
    real = torch.arange(3)
    assert to_device(real, "cpu") is real


def test_async_copy_to_cpu_waits_on_an_event_recorded_behind_the_copy(fake_cuda):
    copy = AsyncCopy(FakeTensor("cuda:1", fake_cuda), "cpu")
    # queued, and an event behind it on the source device's stream; nothing waited for yet
    assert fake_cuda == [("copy", "cuda:1->cpu", True), ("record", "stream of cuda:1")]
    result = copy.wait()
    assert fake_cuda[-1] == ("synchronize",) and result.device == torch.device("cpu")
    assert copy.wait() is result and fake_cuda.count(("synchronize",)) == 1  # waited for once


@pytest.mark.parametrize("source, target", [("cpu", "cuda:0"), ("cuda:0", "cuda:1"), ("cpu", "cpu")])
def test_async_copy_elsewhere_is_to_device_with_no_event(fake_cuda, source, target):
    tensor = FakeTensor(source, fake_cuda)
    copy = AsyncCopy(tensor, target)
    assert copy.event is None and not any(entry[0] == "record" for entry in fake_cuda)
    assert copy.wait().device == torch.device(target)
    assert ("synchronize",) not in fake_cuda


def test_the_package_copies_asynchronously_only_through_the_helper():
    package = Path(flythinker_pl.__file__).parent
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "non_blocking=True" in path.read_text() and path != Path(devices.__file__)
    ]
    assert offenders == []


def test_staggered_cpu_reasoner_copies_its_inputs_before_the_generator_step(make_flythinker, tokenizer, monkeypatch):
    """The branch a GPU Generator with a CPU Reasoner takes (forced here on CPU): the Reasoner's
    inputs are copied (AsyncCopy) before the Generator's step is queued and waited for after it,
    and the tokens equal sequential decoding's."""
    flythinker = make_flythinker(32, 64, lam=4.0)
    ids, mask = left_padded([[5, 9, 13, 21, 8], list(range(30, 41))], tokenizer.pad_token_id)
    prompt_len, cfg = torch.tensor([5, 11]), DecodeConfig(do_sample=False, max_new_tokens=6, engine="sequential")
    expected = generate(flythinker, ids, mask, prompt_len, ["a", "b"], cfg, eos_ids=-1).tokens

    events = []

    class LoggedCopy(AsyncCopy):
        def __init__(self, tensor, device):
            events.append("copy")
            super().__init__(tensor, device)

        def wait(self):
            events.append("wait")
            return super().wait()

    def generator_step(*args, **kwargs):
        events.append("generator step")
        return type(flythinker).generator_step(flythinker, *args, **kwargs)

    def staggered(method, name, **options):
        engine = engines.Staggered(method, **options)
        engine.in_process = False  # no worker process: the GPU-Generator branch
        return engine

    monkeypatch.setattr(engines, "AsyncCopy", LoggedCopy)
    monkeypatch.setattr(flythinker, "generator_step", generator_step)
    monkeypatch.setattr(generate_module, "make_engine", staggered)
    staggered_cfg = dataclasses.replace(cfg, engine="staggered")
    assert generate(flythinker, ids, mask, prompt_len, ["a", "b"], staggered_cfg, eos_ids=-1).tokens == expected
    assert events[:7] == ["copy"] * 3 + ["generator step"] + ["wait"] * 3


@pytest.mark.parametrize("max_new_tokens", [0, -1])
def test_generate_refuses_no_new_tokens_clearly(make_flythinker, tokenizer, max_new_tokens):
    ids, mask = left_padded([[5, 9, 13]], tokenizer.pad_token_id)
    cfg = DecodeConfig(do_sample=False, max_new_tokens=max_new_tokens)  # the config checks are bypassed
    with pytest.raises(ValueError, match=f"max_new_tokens={max_new_tokens} must be >= 1"):
        generate(make_flythinker(), ids, mask, torch.tensor([3]), ["a"], cfg, eos_ids=0)
