"""The CPU staggered engine (the Reasoner steps in a worker process) computes sequential decoding's
function with the parent's current weights, and its worker process never outlives its use.
One method and one worker serve the module: starting a process that imports torch takes seconds."""

from __future__ import annotations

import dataclasses
import gc
import logging
import signal
import subprocess
import sys
import time

import pytest
import torch

from flythinker_pl.config import DecodeConfig, FusionConfig
from flythinker_pl.decoding import engines
from flythinker_pl.decoding.generate import generate
from flythinker_pl.decoding.reasoner_process import reasoner_process
from flythinker_pl.models.flythinker import FlyThinker
from flythinker_pl.models.fusion import LatentFusion

from helpers import left_padded, random_lora_backbones


PROMPTS = [[5, 9, 13, 21, 8, 40, 41], list(range(30, 41)), [7, 7, 3, 19, 44, 52, 61, 12]]
PROFILE = [[0, 1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0, 0]]  # the "history"
IDS = ["a", "b", "c"]
GREEDY = DecodeConfig(do_sample=False, max_new_tokens=10, engine="staggered")
SAMPLED = DecodeConfig(do_sample=True, temperature=1.3, top_p=0.9, max_new_tokens=10, seed=7, engine="staggered")


@pytest.fixture(scope="module")
def method(tokenizer):
    """FlyThinker with LoRA on both models, every lora_B random, nonzero and distinct; lam large
    enough that the latents steer greedy choices."""
    generator, reasoner = random_lora_backbones(tokenizer)
    model = FlyThinker(generator, reasoner, LatentFusion(32, 64, FusionConfig(lam=4.0)), reasoner_frozen=False)
    yield model.eval()
    reasoner_process(model).close()


def batch(tokenizer):
    ids, mask = left_padded(PROMPTS, tokenizer.pad_token_id)
    profile_mask, _ = left_padded(PROFILE, 0)
    return ids, mask, torch.tensor([len(p) for p in PROMPTS]), IDS, profile_mask


def decode(method, tokenizer, cfg, engine):
    ids, mask, prompt_len, sample_ids, profile_mask = batch(tokenizer)
    return generate(
        method,
        ids,
        mask,
        prompt_len,
        sample_ids,
        dataclasses.replace(cfg, engine=engine),
        tokenizer.eos_token_id,
        profile_mask=profile_mask,
    ).tokens


@torch.no_grad()
def assert_argmax_chain(method, tokenizer, rows):
    """Teacher-forced, one row at a time: each generated token is the argmax after its prefix."""
    for prompt, profile, generated in zip(PROMPTS, PROFILE, rows):
        produced = generated + [tokenizer.eos_token_id] if len(generated) < GREEDY.max_new_tokens else generated
        ids = torch.tensor([prompt + produced])
        profile_mask = torch.tensor([profile + [0] * len(produced)])
        logits = method(ids, torch.ones_like(ids), torch.tensor([len(prompt)]), profile_mask=profile_mask)
        assert logits[0, len(prompt) - 1 : -1].argmax(-1).tolist() == produced


@pytest.mark.parametrize("lora_path", ["lean", "peft"])
@pytest.mark.parametrize("sees_profile", [True, False])
def test_process_staggered_decodes_as_sequential(method, tokenizer, sees_profile, lora_path):
    threads = torch.get_num_threads()
    method.reasoner_sees_profile = sees_profile
    try:
        for cfg in (GREEDY, SAMPLED):
            cfg = dataclasses.replace(cfg, lora_path=lora_path)
            staggered = decode(method, tokenizer, cfg, "staggered")
            assert staggered == decode(method, tokenizer, cfg, "sequential")
            if not cfg.do_sample:
                assert_argmax_chain(method, tokenizer, staggered)
    finally:
        method.reasoner_sees_profile = True
    assert torch.get_num_threads() == threads  # the parent's threads are back after decoding


def hidden_states(method, tokenizer, steps=4):
    """The Reasoner's hidden states of a few steps: (the worker's, the parent's own)."""
    ids, mask, prompt_len, _, _ = batch(tokenizer)
    engine = engines.Staggered(method)
    with torch.no_grad():
        _, reference = method.prefill(ids, mask, prompt_len)
        _, state = engine.prefill(ids, mask, prompt_len)
        tokens, ours, theirs = torch.tensor([11, 12, 13]), [], []
        for _ in range(steps):
            state.append_token(), reference.append_token()
            engine.worker.start_step(tokens)
            ours.append(engine.worker.step_result())
            theirs.append(method.reasoner_hidden_step(reference, tokens))
    engine.close()
    return torch.stack(ours), torch.stack(theirs)


def test_bf16_autocast_reaches_the_worker(method, tokenizer):
    plain, _ = hidden_states(method, tokenizer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, theirs = hidden_states(method, tokenizer)
        assert decode(method, tokenizer, GREEDY, "staggered") == decode(method, tokenizer, GREEDY, "sequential")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-4)  # the worker did run in bf16


def test_worker_follows_optimiser_steps_and_replaced_weights(method, tokenizer):
    before, _ = hidden_states(method, tokenizer)
    pid = reasoner_process(method).process.pid
    adapter = [p for n, p in method.reasoner.named_parameters() if "lora_" in n]
    optimizer = torch.optim.SGD(adapter, lr=0.5)
    ids, mask, prompt_len, _, _ = batch(tokenizer)
    method.train()
    method(ids, mask, prompt_len).logsumexp(-1).mean().backward()
    optimizer.step()  # in place, in the shared memory the worker reads
    method.zero_grad()
    method.eval()
    ours, theirs = hidden_states(method, tokenizer)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert not torch.allclose(ours, before, atol=1e-3)  # the step did change the Reasoner
    assert reasoner_process(method).process.pid == pid  # still the same worker (no restart)

    torch.manual_seed(1)  # new storages, as after .to() or load_state_dict(assign=True): sent again
    method.reasoner.load_state_dict(
        {n: torch.randn_like(p) * 0.1 if "lora_B" in n else p.clone() for n, p in method.reasoner.state_dict().items()},
        assign=True,
    )
    ours, theirs = hidden_states(method, tokenizer)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert decode(method, tokenizer, GREEDY, "staggered") == decode(method, tokenizer, GREEDY, "sequential")


def test_errors_surface_in_the_parent_and_the_worker_recovers(method, tokenizer, monkeypatch):
    threads, expected = torch.get_num_threads(), decode(method, tokenizer, GREEDY, "staggered")
    worker = reasoner_process(method)
    worker.start_step(torch.tensor([10**6, 0, 0]))  # no such token: the child's embedding fails
    with pytest.raises(RuntimeError, match=r"Reasoner's worker process failed(.|\n)*IndexError"):
        worker.step_result()

    def failing(*args):
        raise KeyError("the Generator failed while the worker was stepping")

    monkeypatch.setattr(FlyThinker, "generator_step", failing)
    with pytest.raises(KeyError):  # the parent fails mid-step: the worker's reply is left unread
        decode(method, tokenizer, GREEDY, "staggered")
    monkeypatch.undo()
    assert torch.get_num_threads() == threads
    assert decode(method, tokenizer, GREEDY, "staggered") == expected  # that reply was not taken for this one


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has exited
    except FileNotFoundError:
        return True


def wait_until_gone(pid: int, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return gone(pid)


def test_worker_ends_with_close_and_with_its_method(make_flythinker, tokenizer):
    small = make_flythinker(lam=4.0)
    expected = decode(small, tokenizer, GREEDY, "sequential")
    assert decode(small, tokenizer, GREEDY, "staggered") == expected
    pid = reasoner_process(small).process.pid
    reasoner_process(small).close()
    assert wait_until_gone(pid)
    assert decode(small, tokenizer, GREEDY, "staggered") == expected  # a new worker
    pid = reasoner_process(small).process.pid
    del small
    gc.collect()
    assert wait_until_gone(pid)


@pytest.mark.slow  # a fresh interpreter and fork server: ~8 s
def test_worker_exits_when_its_parent_dies():
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from flythinker_pl.decoding.reasoner_process import ReasonerProcess\n"
            "worker = ReasonerProcess()\nprint(worker.process.pid, flush=True)\nimport time; time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        child = int(parent.stdout.readline())
        assert not gone(child)
        parent.send_signal(signal.SIGTERM)  # default handling: no atexit, no finaliser; only the pipe closes
        parent.wait(timeout=30)
        assert wait_until_gone(child)
    finally:
        parent.kill()


def test_auto_picks_and_logs_the_engine(method, caplog):
    threads = torch.get_num_threads()
    engines._log_once.cache_clear()
    try:
        torch.set_num_threads(2)  # CPU with 2 threads: the Reasoner steps in its own process
        with caplog.at_level(logging.INFO, logger="flythinker_pl.decoding.engines"):
            assert isinstance(engines.make_engine(method, "auto"), engines.Staggered)
            engines.make_engine(method, "auto")
        assert [r.getMessage() for r in caplog.records if "engine=auto" in r.getMessage()] == [
            f"decode.engine=auto chose staggered: {engines.auto_engine(method)[1]}"
        ]  # once
        torch.set_num_threads(1)
        assert engines.auto_engine(method)[0] == "sequential"
    finally:
        torch.set_num_threads(threads)


USER_CODE = """
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from flythinker_pl.config import DecodeConfig, FusionConfig
from flythinker_pl.decoding.generate import generate
from flythinker_pl.models.flythinker import FlyThinker
from flythinker_pl.models.fusion import LatentFusion

torch.set_num_threads(2)  # auto picks the worker process on CPU


def lm(width, seed):
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=100, hidden_size=width, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=2 * width)
    return Qwen2ForCausalLM(config).eval()


method = FlyThinker(lm(32, 1), lm(16, 2).model, LatentFusion(16, 32, FusionConfig(lam=4.0)), True).eval()
ids = torch.tensor([[5, 6, 7, 8], [0, 9, 10, 11]])
batch = (ids, (ids > 0).long(), torch.tensor([4, 3]), ["a", "b"])
tokens = {engine: generate(method, *batch, DecodeConfig(do_sample=False, max_new_tokens=6, engine=engine), -1).tokens
          for engine in ("auto", "staggered", "sequential")}
print("same tokens" if tokens["auto"] == tokens["staggered"] == tokens["sequential"] else f"differ: {tokens}")
"""


@pytest.mark.parametrize(
    "how",
    [
        "script without a main guard",
        pytest.param("python -c", marks=pytest.mark.slow),
        pytest.param("code from stdin", marks=pytest.mark.slow),
    ],
)
def test_the_worker_starts_from_user_code_anywhere(tmp_path, how):
    """multiprocessing re-runs the caller's main module in a child: a script with no `__main__` guard (or
    code read from stdin) would decode again there and die. The worker starts without it (~10 s: a fresh
    interpreter and fork server)."""
    script = tmp_path / "decode.py"
    script.write_text(USER_CODE)
    command = {
        "script without a main guard": ([sys.executable, str(script)], None),
        "python -c": ([sys.executable, "-c", USER_CODE], None),
        "code from stdin": ([sys.executable, "-"], USER_CODE),
    }[how]
    result = subprocess.run(command[0], input=command[1], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "same tokens"
    assert "worker process exited" not in result.stderr and "bootstrapping" not in result.stderr
