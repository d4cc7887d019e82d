"""Beyond one GPU: two_gpu (the Reasoner on cuda:1, decode.reasoner_device) and ddp (two processes train
FlyThinker; the replicas must stay identical)."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from ...measure import timed
from ...models.architectures import ARCHITECTURES
from .. import optimizer_steps
from .batches import decode_prompts, random_tokens, sequences
from .decode import decode_runner, step_seconds
from .models import make_flythinker
from .parity import TOLERANCE, greedy, greedy_row, teacher_forced
from .plan import Plan


def check_two_gpu(plan: Plan, device: torch.device, out_of_time: Callable[[], bool]) -> dict:
    if device.type != "cuda":
        return {"status": "skipped: no CUDA device"}
    if torch.cuda.device_count() < 2:
        return {"status": "skipped: 1 GPU"}
    dtype, vocab = torch.bfloat16, ARCHITECTURES[plan.generator]["vocab_size"]
    flythinker = make_flythinker(plan, plan.reasoners[0], "lora", dtype, device).eval()
    flythinker.reasoner.to("cuda:1")  # what MethodModule.on_predict_start does for decode.reasoner_device
    size = plan.decode_batches[min(1, len(plan.decode_batches) - 1)]
    batch = decode_prompts(plan, size, vocab, device)
    tokens = {
        engine: greedy(flythinker, engine, batch, plan.parity_tokens, vocab) for engine in ("sequential", "staggered")
    }
    chain = teacher_forced(
        flythinker,
        decode_prompts(plan, size, vocab, device, torch.tensor(tokens["sequential"])),
    )
    agreement = greedy_row(
        "two GPUs: greedy tokens staggered == sequential",
        dtype,
        tokens["sequential"],
        tokens["staggered"],
        chain,
        TOLERANCE[("cuda", dtype)],
    )
    variants = {engine: ("flythinker", engine) for engine in ("sequential", "staggered")}
    run = decode_runner({"flythinker": flythinker}, variants, device, batch, vocab)
    for variant in variants:
        run(variant, plan.decode_tokens)  # warm-up
    seconds = step_seconds(run, variants, plan.decode_tokens, plan.decode_repeats)
    rows = [
        agreement,
        *(
            {
                "check": f"ms/token, {engine} (batch {size})",
                "dtype": "bfloat16",
                "value": 1000 * step,
                "ok": True,
                "detail": f"/ sequential {step / seconds['sequential'][0]:.3f}",
            }
            for engine, (step, _) in seconds.items()
        ),
    ]
    return {
        "status": "ok" if agreement["ok"] else "failed: staggered tokens differ",
        "rows": rows,
        "setting": {"generator": "cuda:0", "reasoner": "cuda:1", "batch": size},
    }


def check_ddp(plan: Plan, device: torch.device, out_of_time: Callable[[], bool], backend: str = "") -> dict:
    """Two processes train FlyThinker (LoRA Generator and Reasoner) on different data under DDP; the
    replicas must stay identical. NCCL on 2 GPUs; `backend="gloo"` runs the same on CPU (tests)."""
    if not backend:
        if device.type != "cuda":
            return {"status": "skipped: no CUDA device (NCCL needs 2 GPUs)"}
        if torch.cuda.device_count() < 2:
            return {"status": "skipped: 1 GPU"}
        backend = "nccl"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    limit = 3 * plan.budgets.get("ddp", 60)  # a hung collective must not hang the whole check
    with tempfile.TemporaryDirectory() as scratch:
        workers = torch.multiprocessing.start_processes(
            _ddp_worker, args=(2, backend, port, asdict(plan), scratch), nprocs=2, join=False, start_method="spawn"
        )
        end = time.perf_counter() + limit
        while not workers.join(timeout=1):  # raises when a worker failed (the other is terminated)
            if time.perf_counter() > end:
                for process in workers.processes:
                    process.kill()
                raise TimeoutError(f"the DDP workers did not finish within {limit} s (killed)")
        result = json.loads(Path(scratch, "ddp.json").read_text())
    same = result["replicas identical"] and result["weights changed"]
    return {
        "status": "ok" if same else "failed: replicas differ after DDP steps (or nothing trained)",
        "rows": [result],
        "setting": {"backend": backend, "processes": 2, "reasoner": plan.reasoners[0]},
    }


def _ddp_worker(rank: int, world_size: int, backend: str, port: int, plan_fields: dict, scratch: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    plan = Plan(
        **{
            **plan_fields,
            "reasoners": tuple(plan_fields["reasoners"]),
            "decode_batches": tuple(plan_fields["decode_batches"]),
        }
    )
    device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        result = _ddp_train(plan, device, rank, world_size)
        if rank == 0:
            Path(scratch, "ddp.json").write_text(json.dumps(result))
    finally:  # after _ddp_train returned: DDP's reducer must die before its process group, or exit can hang
        dist.destroy_process_group()


def _ddp_train(plan: Plan, device: torch.device, rank: int, world_size: int) -> dict:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    # every rank builds the same weights (seeded by name); DDP also broadcasts rank 0's
    method = make_flythinker(plan, plan.reasoners[0], "lora", torch.float32, device).train()
    model = DistributedDataParallel(method, device_ids=[rank] if device.type == "cuda" else None)
    trainable = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    vocab = ARCHITECTURES[plan.generator]["vocab_size"]
    response = random_tokens(torch.Generator().manual_seed(10 + rank), vocab, plan.train_batch, plan.train_response)
    batch = sequences(
        plan.train_prompt, [plan.train_prompt] * plan.train_batch, response, vocab, seed=20 + rank, device=device
    )  # each rank its own data

    def checksum() -> torch.Tensor:
        return torch.stack([p.detach().double().sum() for p in trainable])

    start = checksum()
    optimizer_steps(model, optimizer, [batch], device)
    _, seconds = timed(device, lambda: optimizer_steps(model, optimizer, [batch] * plan.train_steps, device))
    sums = checksum()
    gathered = [torch.zeros_like(sums) for _ in range(world_size)]
    dist.all_gather(gathered, sums)
    return {
        "check": "DDP replicas after training",
        "ms/step": 1000 * seconds / plan.train_steps,
        "replicas identical": all(torch.equal(gathered[0], other) for other in gathered[1:]),
        "weights changed": not torch.equal(start, sums),
        "steps": plan.train_steps + 1,
    }
