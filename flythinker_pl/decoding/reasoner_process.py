"""The Reasoner's decoding steps in a process of its own, for staggered decoding on CPU (engines.py).

A worker thread beside the Generator contends for the GIL (a small model's step is many short,
Python-bound ops), so the Reasoner steps in a child process: per step the parent sends the new
tokens (a few bytes over a pipe) and runs the Generator's step while the child extends the
Reasoner's KV cache and mask and sends back its final hidden state; the latent is made in the
parent (fusion lives there). The prompt pass stays in the parent, the very prefill of sequential
decoding on every thread, and the Reasoner's cache then moves to the child (`start`; a recurrent
Reasoner's RecurrentCache with its last hidden state and feedback, models/recurrent.py): a prompt pass
in the child measured slower, on one thread, and slower still on two beside the parent's idle ones.

Weights are not copied: the Reasoner's parameters and buffers are moved to shared memory and the
child's module views that memory, so in-place updates (optimiser steps, checkpoint loads) reach
it at once. A new storage (`.to()`, new adapters) or a changed train/eval mode is detected at each
prefill, and the module is sent again.

Lifecycle: one worker per method, started at its first prefill, kept across generate() calls,
closed when the method is garbage collected, at interpreter exit, or by `close()`. Workers are
forked from multiprocessing's fork server, a single-threaded process that imports torch and the
Reasoner's code once (seconds), so a worker then starts in ~0.1 s (forking this process is unsafe
once its OpenMP threads run; a spawn re-imports everything, ~4 s a worker). The child ignores
SIGINT/SIGTERM and exits when its pipe closes, so a parent that dies, even by SIGKILL, leaves no
orphan, and a parent that handles SIGTERM (Lightning) finishes its batch with the Reasoner intact.
The worker starts without re-running the caller's main module (`_main_not_rerun`), so generate() works
from a notebook, `python -c`, stdin, or a script with no `if __name__ == "__main__":` guard.
Decoding only: the child runs under no_grad (no graph crosses a process) and the parent's CPU autocast.
Under decode.compile the child steps through its own compiled graph on a static state (static.py): the
parent sends the capacity with the cache, and both processes compile (and find inductor's disk cache) at once.
"""

from __future__ import annotations

import shutil
import signal
import threading
import traceback
import weakref
from contextlib import contextmanager
from itertools import chain
from multiprocessing import spawn

import torch
import torch.multiprocessing as mp
from torch import nn

from ..models.decode_cache import DecodeCache
from ..models.lora_step import LeanLoRA
from ..models.recurrent import RecurrentCache, recurrent_step
from ..models.sft import DecodeState
from .compiled import CompiledSteps
from .static import StaticDecodeState


def _pack(tensor: torch.Tensor) -> tuple:
    """Plain bytes: pickling a tensor through the pipe would move it to new shared memory, per message."""
    return (
        str(tensor.dtype).removeprefix("torch."),
        tuple(tensor.shape),
        tensor.contiguous().view(torch.uint8).numpy().tobytes(),
    )


def _unpack(dtype: str, shape: tuple, data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(getattr(torch, dtype)).view(shape)


def _hidden_step(reasoner: nn.Module, tokens: torch.Tensor, state: DecodeState, positions: torch.Tensor):
    """The Reasoner's final hidden state [B, d_R] for the newest tokens (after state.append_token)."""
    return reasoner(
        input_ids=tokens,
        position_ids=positions,
        attention_mask=state.attention_mask,
        past_key_values=state.reasoner_cache,
        use_cache=True,
    ).last_hidden_state[:, -1]


def _serve(conn) -> None:
    """The child: answer load / start / step requests until the parent closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when the Reasoner stops
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)  # one core, beside the Generator's
    reasoner = lean = state = autocast = steps = None
    while True:
        try:
            kind, *args = conn.recv()
        except (EOFError, OSError):  # the parent closed the pipe, or died
            return
        try:
            if kind == "load":
                if lean is not None and lean.active:
                    lean.__exit__()
                reasoner, reply = args[0], None
                lean = LeanLoRA(reasoner)
            elif kind == "start":  # a decode: the Reasoner's mask and cache after the prompt
                mask, layers, autocast, lean_forward, recurrence, capacity = args
                state = DecodeState(_unpack(*mask), None, None, DecodeCache())
                if recurrence is not None:  # a recurrent Reasoner: its feedback and last hidden state too
                    state.reasoner_cache = RecurrentCache(recurrence[0])
                    state.reasoner_cache.last_hidden = _unpack(*recurrence[1])
                for index, (keys, values) in enumerate(layers):
                    state.reasoner_cache.update(_unpack(*keys), _unpack(*values), index)
                if lean_forward != lean.active:  # the LoRA path the parent decodes with (decode.lora_path)
                    lean.__enter__() if lean_forward else lean.__exit__()
                steps = None
                if capacity:  # decode.compile: the parent's static capacity
                    import torch._inductor.config as inductor

                    inductor.compile_threads = 1  # no pool of compile workers beside the parent's
                    state, steps = StaticDecodeState(state, capacity), CompiledSteps(torch.device("cpu"))
                reply = None
            else:  # step: the newest token of each row
                if steps is not None:
                    state.reserve_column()
                positions, tokens, cache = state.append_token(), torch.tensor(args[0])[:, None], state.reasoner_cache
                with torch.no_grad(), torch.autocast("cpu", dtype=autocast[1], enabled=autocast[0]):
                    if isinstance(cache, RecurrentCache):
                        hidden = recurrent_step(reasoner, tokens, state.attention_mask, positions, cache)[:, -1]
                    elif steps is not None:
                        hidden = steps(_hidden_step, reasoner, tokens, state, positions)
                    else:
                        hidden = _hidden_step(reasoner, tokens, state, positions)
                reply = _pack(hidden)
            message = ("ok", reply)
        except Exception:  # reported to the parent, which raises it; the worker stays usable
            message = ("error", traceback.format_exc())
        try:
            conn.send(message)
        except OSError:
            return


def _instance_forwards(module: nn.Module) -> dict:
    """Forwards installed per instance: the lean LoRA forward while generate() runs (lora_step.py).
    They are closures over the parent's objects, so the module travels without them and the child
    installs its own."""
    return {m: vars(m)["forward"] for m in module.modules() if "forward" in vars(m)}


def fits_in_shared_memory(module: nn.Module) -> bool:
    """Whether the module's weights fit in /dev/shm, where torch shares memory (Docker's default is 64 MB)."""
    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:  # none to measure (not Linux): let torch try
        return True
    tensors = chain(module.parameters(), module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors if not t.is_shared()) <= free


def _signature(module: nn.Module):
    """What the child's copy must match: the storages it views and every submodule's train/eval mode."""
    tensors = list(chain(module.parameters(), module.buffers()))
    return (
        [(t.data_ptr(), t.dtype, t.shape) for t in tensors],
        [m.training for m in module.modules()],
        all(t.is_shared() for t in tensors),
    )


_preparing = threading.Lock()


@contextmanager
def _main_not_rerun():
    """While a worker starts: prepare it without the caller's main module. multiprocessing re-runs the
    parent's main script in a child (as __mp_main__) to resolve functions pickled by reference to it;
    a script without a `__main__` guard would then call generate() again in the child, which dies
    starting a process while it bootstraps. The worker needs nothing from __main__: its code and the
    Reasoner's classes are imported by module name (the parent's sys.path still travels)."""
    prepare = spawn.get_preparation_data

    def without_main(name):
        data = prepare(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    with _preparing:
        spawn.get_preparation_data = without_main
        try:
            yield
        finally:
            spawn.get_preparation_data = prepare


class ReasonerProcess:
    def __init__(self, modules=()):
        """`modules`: what the worker will import (the Reasoner's code), preloaded by the fork server
        when this starts it (the preload list is process-wide: it only adds imports)."""
        mp.set_forkserver_preload(sorted({__name__, *modules}))
        context = mp.get_context("forkserver")
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=_serve, args=(child_conn,), name="reasoner", daemon=True)
        with _main_not_rerun():
            self.process.start()
        child_conn.close()  # only the child holds its end: its death reads as EOF here
        self.loaded = None  # _signature of the module the child holds
        self.lean = False  # whether the parent's Reasoner runs the lean LoRA forward
        self.pending = 0  # replies not read yet (a request abandoned by an error in the parent)
        self.starting = False  # a start's reply is still to be read (at the first step)

    @property
    def alive(self) -> bool:
        return not self.conn.closed and self.process.is_alive()

    def load(self, reasoner: nn.Module) -> None:
        """Make the child compute with `reasoner`'s current weights and train/eval modes."""
        forwards = _instance_forwards(reasoner)
        self.lean = bool(forwards)  # the child steps through the same LoRA path (decode.lora_path)
        if _signature(reasoner) == self.loaded:
            return
        reasoner.share_memory()  # in place (a no-op for what is shared already)
        for module in forwards:
            del module.forward
        try:
            self._send("load", reasoner)
        finally:
            for module, forward in forwards.items():
                module.forward = forward
        self._receive()
        self.loaded = _signature(reasoner)

    def start(self, state: DecodeState, capacity: int = 0) -> None:
        """Hand the Reasoner's cache after the prompt over to the child, which steps from there
        (under the parent's CPU autocast; `capacity` > 0: through a compiled step on a static state)."""
        cache = state.reasoner_cache
        layers = [(_pack(layer.keys), _pack(layer.values)) for layer in cache.layers]
        autocast = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
        recurrence = (cache.feedback, _pack(cache.last_hidden)) if isinstance(cache, RecurrentCache) else None
        self._send("start", _pack(state.reasoner_mask), layers, autocast, self.lean, recurrence, capacity)
        self.starting = True  # its reply is read at the first step: the child unpacks while the parent samples
        state.reasoner_cache = None  # the child's now

    def start_step(self, tokens: torch.Tensor) -> None:
        """The Reasoner reads `tokens` [B] in the child; `step_result` waits for its hidden state [B, d_R]."""
        if self.starting:  # the child took the prompt's cache (or says why not) before its first step
            self.starting = False
            self._receive()
        self._send("step", tokens.tolist())

    def step_result(self) -> torch.Tensor:
        return _unpack(*self._receive())

    def close(self) -> None:
        """End the child: it exits when its pipe closes (killed if it has not within a few seconds)."""
        self.conn.close()
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()

    def _send(self, *message) -> None:
        self.starting = False
        while self.pending:  # a reply nobody read belongs to an abandoned request
            try:
                self._receive()
            except RuntimeError:
                pass
        try:
            self.conn.send(message)
        except OSError as error:
            raise self._exited() from error
        self.pending += 1

    def _receive(self):
        try:
            status, reply = self.conn.recv()
        except (EOFError, OSError) as error:
            self.pending = 0
            raise self._exited() from error
        self.pending -= 1  # (not when interrupted: that reply is still to be drained)
        if status == "error":
            raise RuntimeError(f"the Reasoner's worker process failed:\n{reply}")
        return reply

    def _exited(self) -> RuntimeError:
        self.close()
        return RuntimeError(f"the Reasoner's worker process exited (code {self.process.exitcode})")


_workers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # method -> its ReasonerProcess


def reasoner_process(method) -> ReasonerProcess:
    """`method`'s worker, started on first use (or after it died), holding its current Reasoner."""
    worker = _workers.get(method)
    if worker is None or not worker.alive:
        worker = _workers[method] = ReasonerProcess({type(m).__module__ for m in method.reasoner.modules()})
        weakref.finalize(method, worker.close)  # also runs at interpreter exit
    worker.load(method.reasoner)
    return worker
