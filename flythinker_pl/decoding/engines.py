"""Decoding engines: how one incremental step of a method is executed.

All engines compute the same function (method.step); they differ only in scheduling:
  sequential  Generator step, then Reasoner step (the reference; also plain decoding for SFT,
              Coconut, and Static, whose Reasoner reads the prompt once and never steps)
  staggered   the Reasoner reads token k (producing the latent for step k+1) while the Generator
              reads token k with the latent of step k: a side CUDA stream on one GPU, each model
              on its own device when placed on two, the Reasoner in a worker process on CPU
              (reasoner_process.py; a thread contends for the GIL and measured slower than sequential).
              A recurrent Reasoner (flythinker_recurrent) too: its feedback stays inside its own step
  shared      one base model with two LoRA adapters: both steps are ONE batched forward with the
              adapter chosen per row, so the weights are read once per token
  auto        what bench decode measured fastest on such a device (auto_engine), logged once
"""
from __future__ import annotations

import functools
import logging

import torch

from ..models.baselines import StaticFlyThinker
from ..models.devices import AsyncCopy
from ..models.flythinker import FlyThinker
from ..models.recurrent import RecurrentCache
from ..models.shared import SharedBaseFlyThinker
from .reasoner_process import fits_in_shared_memory, reasoner_process

log = logging.getLogger(__name__)


class Sequential:
    def __init__(self, method):
        self.method = method

    def prefill(self, input_ids, attention_mask, prompt_len, profile_mask=None):
        return self.method.prefill(input_ids, attention_mask, prompt_len, profile_mask=profile_mask)

    def step(self, state, tokens):
        return self.method.step(state, tokens)

    def close(self):
        pass


class Staggered(Sequential):
    def __init__(self, method: FlyThinker):
        super().__init__(method)
        generator_device, reasoner_device = method.generator_device, method.reasoner_device
        self.stream = self.worker = None
        self.reasoner_on_cpu = reasoner_device.type == "cpu"
        self.in_process = generator_device.type == "cpu" and self.reasoner_on_cpu
        self.threads = torch.get_num_threads()
        if generator_device.type == "cuda" and generator_device == reasoner_device:
            self.stream = torch.cuda.Stream(generator_device)
        # else: two devices, each with its own queue; only the order of launches matters (step)

    def prefill(self, input_ids, attention_mask, prompt_len, profile_mask=None):
        logits, state = super().prefill(input_ids, attention_mask, prompt_len, profile_mask)
        if self.in_process:  # the prompt pass ran here, on every thread; the worker steps from its cache
            self.worker = reasoner_process(self.method)
            self.worker.start(state)
            torch.set_num_threads(1)  # while stepping, each process has a core (the worker steps with 1)
        if self.stream is not None:  # the side stream will read (then free) this main-stream memory
            for layer in state.reasoner_cache.layers:
                layer.keys.record_stream(self.stream)
                layer.values.record_stream(self.stream)
            if isinstance(state.reasoner_cache, RecurrentCache):  # a recurrent Reasoner's next input
                state.reasoner_cache.last_hidden.record_stream(self.stream)
        return logits, state

    def step(self, state, tokens):
        method = self.method
        positions = state.append_token()
        if self.stream is not None:
            main = torch.cuda.current_stream(tokens.device)
            self.stream.wait_stream(main)  # the token was sampled on the main stream
            with torch.cuda.stream(self.stream):
                next_latents = method.reasoner_step(state, tokens)
            logits = method.generator_step(state, tokens, positions)
            main.wait_stream(self.stream)
            next_latents.record_stream(main)
        elif self.worker is not None:
            self.worker.start_step(tokens)
            logits = method.generator_step(state, tokens, positions)
            next_latents = method.latent_of(self.worker.step_result(), state)
        elif self.reasoner_on_cpu:  # a CPU Reasoner blocks Python: queue the GPU's step first, and
            # before it the Reasoner's inputs' copies, so that waiting for them does not wait for the step
            inputs = (tokens[:, None], state.reasoner_mask, state.reasoner_position())
            inputs = [AsyncCopy(x, method.reasoner_device) for x in inputs]
            logits = method.generator_step(state, tokens, positions)
            hidden, _ = method.reasoner_forward(*(copy.wait() for copy in inputs), state.reasoner_cache)
            next_latents = method.latent_of(hidden[:, -1], state)
        else:  # two GPUs: launch both forwards before any copy between them (a copy joins the queues)
            hidden = method.reasoner_hidden_step(state, tokens)
            logits = method.generator_step(state, tokens, positions)
            next_latents = method.latent_of(hidden, state)
        state.latents = next_latents
        return logits

    def close(self):  # the worker stays up for the next batch (reasoner_process.py)
        torch.set_num_threads(self.threads)


class Shared(Sequential):
    """Both adapters' steps as one batched forward (SharedBaseFlyThinker.batched_step), through the
    lean LoRA forward that generate() installs (decode.lora_path=lean)."""

    def __init__(self, method: SharedBaseFlyThinker):
        super().__init__(method)
        if not method.lora.active:
            raise ValueError("decode.engine=shared runs both adapters as one batched op of the lean LoRA "
                             "forward: it needs decode.lora_path=lean")

    def prefill(self, input_ids, attention_mask, prompt_len, profile_mask=None):
        logits, state = self.method.prefill(input_ids, attention_mask, prompt_len, profile_mask=profile_mask)
        self.method.merge_caches(state)
        return logits, state

    def step(self, state, tokens):
        return self.method.batched_step(state, tokens)


def make_engine(method, name: str) -> Sequential:
    if not isinstance(method, FlyThinker) or isinstance(method, StaticFlyThinker):
        return Sequential(method)  # one model stepping: nothing to overlap
    if name == "auto":
        name, why = auto_engine(method)
        _log_once(f"decode.engine=auto chose {name}: {why}")
    if name == "shared":
        if not isinstance(method, SharedBaseFlyThinker):
            raise ValueError("decode.engine=shared needs reasoner.shared_base=true (one base model, two adapters)")
        return Shared(method)
    if name == "staggered":
        if isinstance(method, SharedBaseFlyThinker):
            raise ValueError("with reasoner.shared_base=true the two steps share one model (and its active "
                             "adapter): use decode.engine=shared, or sequential")
        return Staggered(method)
    return Sequential(method)


def auto_engine(method: FlyThinker) -> tuple[str, str]:
    """The engine that measured fastest on such a device (flythinker bench decode), and why. A rule
    from those figures, not a timing at run time: decoding must not depend on a noisy measurement."""
    if isinstance(method, SharedBaseFlyThinker):
        if method.lora.active:
            return "shared", "one base model with two adapters: both steps are one batched forward"
        return "sequential", "one base model with two adapters on peft's LoRA path, which cannot batch them"
    if "cuda" in (method.generator_device.type, method.reasoner_device.type):
        return "staggered", "on GPU the Reasoner's step overlaps the Generator's (side stream or its own device)"
    threads = torch.get_num_threads()
    if threads < 2:
        return "sequential", "CPU with 1 thread: two processes stepping side by side would share one core"
    if not fits_in_shared_memory(method.reasoner):
        return "sequential", "the Reasoner's weights do not fit in /dev/shm, which its worker process would share"
    return "staggered", (f"CPU with {threads} threads: the Reasoner steps in its own process beside the "
                         "Generator, one thread each (bench decode on 2 cores: 0.7-0.85 of sequential's step)")


@functools.cache
def _log_once(message: str) -> None:
    log.info(message)
