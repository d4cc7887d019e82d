"""Decoding engines: how one incremental step of a method is executed.

All engines compute the same function (method.step); they differ only in scheduling:
  sequential  Reasoner step, then Generator step (the reference; also plain decoding for SFT)
  staggered   the Reasoner reads token k (producing the latent for step k+1) while the Generator
              reads token k with the latent of step k: a side CUDA stream on one GPU, each model
              on its own device when placed on two, a worker thread on CPU
  shared      one base model with two LoRA adapters: both steps are ONE batched forward with the
              adapter chosen per row, so the weights are read once per token
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from ..models.flythinker import FlyThinker
from ..models.shared import SharedBaseFlyThinker


class Sequential:
    def __init__(self, method):
        self.method = method

    def prefill(self, input_ids, attention_mask, prompt_len):
        return self.method.prefill(input_ids, attention_mask, prompt_len)

    def step(self, state, tokens):
        return self.method.step(state, tokens)

    def close(self):
        pass


class Staggered(Sequential):
    def __init__(self, method: FlyThinker):
        super().__init__(method)
        generator_device, reasoner_device = method.generator_device, method.reasoner_device
        self.stream = self.pool = None
        if generator_device.type == "cuda" and generator_device == reasoner_device:
            self.stream = torch.cuda.Stream(generator_device)
        elif generator_device.type == "cpu" and reasoner_device.type == "cpu":
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reasoner")
        # else: two devices; their kernel queues already run concurrently

    def step(self, state, tokens):
        method = self.method
        positions = state.append_token()
        if self.stream is not None:
            main = torch.cuda.current_stream(tokens.device)
            self.stream.wait_stream(main)  # the token was sampled on the main stream
            with torch.cuda.stream(self.stream):
                next_latents = method.reasoner_step(state, tokens, positions)
            logits = method.generator_step(state, tokens, positions)
            main.wait_stream(self.stream)
            next_latents.record_stream(main)
        elif self.pool is not None:
            # grad mode is thread-local: the worker must not record autograd graphs
            future = self.pool.submit(_without_grad, method.reasoner_step, state, tokens, positions)
            logits = method.generator_step(state, tokens, positions)
            next_latents = future.result()
        else:
            next_latents = method.reasoner_step(state, tokens, positions)
            logits = method.generator_step(state, tokens, positions)
        state.latents = next_latents
        return logits

    def close(self):
        if self.pool is not None:
            self.pool.shutdown()


class Shared(Sequential):
    def prefill(self, input_ids, attention_mask, prompt_len):
        logits, state = self.method.prefill(input_ids, attention_mask, prompt_len)
        self.method.merge_caches(state)
        return logits, state

    def step(self, state, tokens):
        return self.method.batched_step(state, tokens)


def _without_grad(fn, *args):
    with torch.no_grad():
        return fn(*args)


def make_engine(method, name: str) -> Sequential:
    if not isinstance(method, FlyThinker):
        return Sequential(method)  # one model: nothing to overlap
    if name == "auto":
        name = "shared" if isinstance(method, SharedBaseFlyThinker) else "staggered"
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
