"""Decoding engines: how one incremental step of a method is executed.

All engines compute the same function (method.step); they differ only in scheduling:
  sequential  Generator step, then Reasoner step (the reference; also plain decoding for SFT,
              Coconut, and Static, whose Reasoner reads the prompt once and never steps)
  staggered   the Reasoner reads token k (producing the latent for step k+1) while the Generator
              reads token k with the latent of step k: a side CUDA stream on one GPU (the prompt pass
              too, in chunks, prefill.py), each model on its own device when placed on two, the Reasoner
              in a worker process on CPU (reasoner_process.py; a thread contends for the GIL and measured
              slower than sequential). On CPU the prompt pass stays one pass in the parent on every
              thread: a process beside it (one thread each) measured slower.
              A recurrent Reasoner (flythinker_recurrent) too: its feedback stays inside its own step
  shared      one base model with two LoRA adapters: both steps are ONE batched forward with the
              adapter chosen per row, so the weights are read once per token; on GPU the prompt pass too,
              in chunks, the Reasoner one chunk ahead (prefill.py)
  auto        what bench decode measured fastest on such a device (auto_engine), logged once

With `compile=True` (decode.compile) a step runs as a compiled graph over a static state (static.py,
compiled.py): the whole step where both models step in one process and place, each model's step apart
where they are apart (two devices, the CPU worker, which compiles its own). On one GPU the staggered
engine then replays the sequential step as one CUDA graph: launches are what its side stream could hide.
"""

from __future__ import annotations

import functools
import logging

import torch

from ..models.baselines import StaticFlyThinker
from ..models.devices import AsyncCopy
from ..models.flythinker import FlyThinker
from ..models.recurrent import RecurrentCache, RecurrentFlyThinker
from ..models.shared import SharedBaseFlyThinker
from .compiled import CompiledSteps
from .prefill import chunkable, prefill_shared, prefill_two_models
from .reasoner_process import fits_in_shared_memory, reasoner_process
from .static import StaticDecodeState, capacity_for

log = logging.getLogger(__name__)


def compilable(method) -> tuple[bool, str]:
    """Whether decode.compile can run this method's step, and why not."""
    if isinstance(method, RecurrentFlyThinker):
        return False, "the recurrent Reasoner's cache carries its last hidden state between steps"
    return True, ""


class Sequential:
    """`compile`: steps run compiled over a static state with room for `max_new_tokens` (compiled.py)."""

    def __init__(self, method, compile: bool = False, max_new_tokens: int = 0):
        if compile and max_new_tokens < 1:
            raise ValueError("a compiled engine sizes its static state for the decode: give max_new_tokens >= 1")
        if compile and not compilable(method)[0]:
            raise ValueError(f"decode.compile cannot run {type(method).__name__}: {compilable(method)[1]}")
        self.method, self.max_new_tokens = method, max_new_tokens
        self.steps = CompiledSteps(self.device) if compile else None

    @property
    def device(self) -> torch.device:
        return self.method.generator.get_input_embeddings().weight.device

    @property
    def compile_seconds(self) -> float:
        """Seconds this engine's steps spent compiling graphs (0 when eager, or every graph was compiled)."""
        return self.steps.seconds if self.steps is not None else 0.0

    def prefill(self, input_ids, attention_mask, prompt_len, profile_mask=None):
        return self.static(*self.method.prefill(input_ids, attention_mask, prompt_len, profile_mask=profile_mask))

    def static(self, logits, state):
        """prefill's result, its state static when steps are compiled."""
        if self.steps is None:
            return logits, state
        return logits, StaticDecodeState(state, capacity_for(state.attention_mask.shape[1], self.max_new_tokens))

    def run(self, function, *args):
        """`function(*args)`, compiled when this engine compiles."""
        if self.steps is None:
            return function(*args)
        args[1].reserve_column()  # (method, state, ...): refuse a step past the static capacity
        return self.steps(function, *args)

    def step(self, state, tokens):
        return self.run(type(self.method).step, self.method, state, tokens)

    def close(self):
        pass


class Staggered(Sequential):
    """`fallback`: if the CPU worker cannot start, step in this process (sequential) and say so once
    (auto's choice must always decode); otherwise the failure is raised."""

    def __init__(self, method: FlyThinker, compile: bool = False, max_new_tokens: int = 0, fallback: bool = False):
        super().__init__(method, compile, max_new_tokens)
        generator_device, reasoner_device = method.generator_device, method.reasoner_device
        self.stream = self.worker = None
        self.fallback = fallback
        self.reasoner_on_cpu = reasoner_device.type == "cpu"
        self.in_process = generator_device.type == "cpu" and self.reasoner_on_cpu
        self.threads = torch.get_num_threads()
        if generator_device.type == "cuda" and generator_device == reasoner_device:
            self.stream = torch.cuda.Stream(generator_device)
        # else: two devices, each with its own queue; only the order of launches matters (step)

    def prefill(self, input_ids, attention_mask, prompt_len, profile_mask=None):
        if self.stream is not None and chunkable(self.method):
            logits, state = self.overlapped_prefill(input_ids, attention_mask, prompt_len, profile_mask)
        else:
            logits, state = self.method.prefill(input_ids, attention_mask, prompt_len, profile_mask=profile_mask)
        if self.in_process:  # the prompt pass ran here, on every thread; the worker steps from its cache
            self.start_worker(state)
        if self.stream is not None:  # the side stream will read (then free) this main-stream memory
            for layer in state.reasoner_cache.layers:
                layer.keys.record_stream(self.stream)
                layer.values.record_stream(self.stream)
            if isinstance(state.reasoner_cache, RecurrentCache):  # a recurrent Reasoner's next input
                state.reasoner_cache.last_hidden.record_stream(self.stream)
        return self.static(logits, state)

    def overlapped_prefill(self, input_ids, attention_mask, prompt_len, profile_mask):
        """The chunked prompt pass, the Reasoner's chunk i+1 on the side stream beside the Generator's chunk i."""
        main, side = torch.cuda.current_stream(input_ids.device), self.stream
        side.wait_stream(main)  # the prompt's tensors were made on the main stream

        def beside(run):
            with torch.cuda.stream(side):
                latents = run()
                done = torch.cuda.Event()
                done.record(side)
            return latents, done

        def join(handle):
            latents, done = handle
            main.wait_event(done)
            latents.record_stream(main)
            return latents

        return prefill_two_models(self.method, input_ids, attention_mask, prompt_len, profile_mask, beside, join)

    def start_worker(self, state) -> None:
        try:
            self.worker = reasoner_process(self.method)
            capacity = capacity_for(state.attention_mask.shape[1], self.max_new_tokens) if self.steps else 0
            self.worker.start(state, capacity)
        except Exception as error:
            if not self.fallback:
                raise
            _log_once(
                f"decode.engine=auto: the Reasoner's worker process could not start "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                "decoding sequentially in this process"
            )
            self.worker, self.in_process = None, False
            return
        torch.set_num_threads(1)  # while stepping, each process has a core (the worker steps with 1)

    def step(self, state, tokens):
        method = self.method
        if self.steps is not None and (
            self.stream is not None or not self.reasoner_on_cpu and method.generator_device == method.reasoner_device
        ):
            return super().step(state, tokens)  # one device, one graph: the sequential step
        if self.steps is not None:
            state.reserve_column()
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
            logits = self.generator_step(state, tokens, positions)
            next_latents = method.latent_of(self.worker.step_result(), state)
        elif self.reasoner_on_cpu:  # a CPU Reasoner blocks Python: queue the GPU's step first, and
            # before it the Reasoner's inputs' copies, so that waiting for them does not wait for the step
            # (also a CPU worker's fallback: both on the CPU, in order)
            inputs = (tokens[:, None], state.reasoner_mask, state.reasoner_position())
            inputs = [AsyncCopy(x, method.reasoner_device) for x in inputs]
            logits = self.generator_step(state, tokens, positions)
            hidden, _ = method.reasoner_forward(*(copy.wait() for copy in inputs), state.reasoner_cache)
            next_latents = method.latent_of(hidden[:, -1], state)
        else:  # two GPUs: launch both forwards before any copy between them (a copy joins the queues)
            hidden = self.maybe_compiled(type(method).reasoner_hidden_step, method, state, tokens)
            logits = self.generator_step(state, tokens, positions)
            next_latents = method.latent_of(hidden, state)
        state.latents = next_latents
        return logits

    def maybe_compiled(self, function, *args):
        return function(*args) if self.steps is None else self.steps(function, *args)

    def generator_step(self, state, tokens, positions):
        if self.steps is None:  # eager: the method's own attribute (what a test may wrap)
            return self.method.generator_step(state, tokens, positions)
        return self.steps(type(self.method).generator_step, self.method, state, tokens, positions)

    def close(self):  # the worker stays up for the next batch (reasoner_process.py)
        torch.set_num_threads(self.threads)


class Shared(Sequential):
    """Both adapters' steps as one batched forward (SharedBaseFlyThinker.batched_step), through the
    lean LoRA forward that generate() installs (decode.lora_path=lean)."""

    def __init__(self, method: SharedBaseFlyThinker, compile: bool = False, max_new_tokens: int = 0):
        super().__init__(method, compile, max_new_tokens)
        if not method.lora.active:
            raise ValueError(
                "decode.engine=shared runs both adapters as one batched op of the lean LoRA "
                "forward: it needs decode.lora_path=lean"
            )

    def prefill(self, input_ids, attention_mask, prompt_len, profile_mask=None):
        if input_ids.device.type == "cuda":  # a GPU waits on launches: one batched forward a chunk
            return self.static(*prefill_shared(self.method, input_ids, attention_mask, prompt_len, profile_mask))
        # on CPU two passes measured faster (bench decode: the chunks' masked columns and padding rows
        # cost more than the batching saves, at batch 1 and 16)
        logits, state = self.method.prefill(input_ids, attention_mask, prompt_len, profile_mask=profile_mask)
        self.method.merge_caches(state)
        return self.static(logits, state)

    def step(self, state, tokens):
        return self.run(type(self.method).batched_step, self.method, state, tokens)


def make_engine(method, name: str, compile: bool = False, max_new_tokens: int = 0) -> Sequential:
    """The engine `name` (decode.engine) for `method`; `compile` (decode.compile) runs its steps as
    compiled graphs over a static state with room for `max_new_tokens`."""
    options = dict(compile=compile, max_new_tokens=max_new_tokens)
    if not isinstance(method, FlyThinker) or isinstance(method, StaticFlyThinker):
        return Sequential(method, **options)  # one model stepping: nothing to overlap
    chosen_by_auto = name == "auto"
    if chosen_by_auto:
        name, why = auto_engine(method)
        _log_once(f"decode.engine=auto chose {name}: {why}")
    if name == "shared":
        if not isinstance(method, SharedBaseFlyThinker):
            raise ValueError("decode.engine=shared needs reasoner.shared_base=true (one base model, two adapters)")
        return Shared(method, **options)
    if name == "staggered":
        if isinstance(method, SharedBaseFlyThinker):
            raise ValueError(
                "with reasoner.shared_base=true the two steps share one model (and its active "
                "adapter): use decode.engine=shared, or sequential"
            )
        return Staggered(method, **options, fallback=chosen_by_auto)
    return Sequential(method, **options)


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
    return "staggered", (
        f"CPU with {threads} threads: the Reasoner steps in its own process beside the "
        "Generator, one thread each (bench decode on 2 cores: 0.7-0.85 of sequential's step)"
    )


@functools.cache
def _log_once(message: str) -> None:
    log.info(message)
