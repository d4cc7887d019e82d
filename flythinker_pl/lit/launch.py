"""One fit across many processes and pre-emptions: ranks agree on one decision; checkpoints are
written atomically.

Under torchrun or srun every rank runs the whole command, so each would choose its own run dir
(version_N) and resume point, racing with rank 0 creating its dir. `agree_across_ranks` makes
the choice on global rank 0 only and hands it to the other ranks through the launch's c10d
TCPStore, before Lightning initialises the process group: torchrun's agent store, or without an
agent (srun, LSF, MPI) a store that rank 0 hosts on the address and port of the coming process
group, multi-tenant, so that the process group later shares its server.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from fsspec.utils import get_protocol
from lightning.fabric.plugins.environments import (
    ClusterEnvironment,
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.distributed import DistError, TCPStore

from ..config import Config

AGREEMENT_TIMEOUT = timedelta(minutes=10)
SRUN_HINT = "The `srun` command is available on your system but is not used"  # Lightning's, on SLURM machines
# Rank 0's store server must outlive the agreement: the other ranks may read late, and the
# process group Lightning creates next reuses the server (multi-tenant) instead of a second one.
_stores: dict[tuple[str, int, bool], TCPStore] = {}


def _environments() -> tuple[type[ClusterEnvironment], ...]:
    """The launches Lightning detects, in its order (torchrun first, then SLURM, LSF, MPI). SLURM's
    only where srun started tasks (SLURM_NTASKS), the one case it detects: asked anywhere else, it
    warns that "the `srun` command is available on your system but is not used" on every machine
    with SLURM installed (a login node), job or not."""
    srun_tasks = "SLURM_NTASKS" in os.environ
    return (TorchElasticEnvironment, *([SLURMEnvironment] if srun_tasks else []), LSFEnvironment, MPIEnvironment)


def cluster_environment() -> Optional[ClusterEnvironment]:
    """For the Trainer's `plugins`; None: Lightning's own choice. Inside a SLURM job Lightning
    detects the job's tasks (experiments/slurm/*.sbatch and a sweep's jobs start them with srun, so
    its hint does not apply); a job that submitit runs (a sweep's) is requeued by submitit at the
    time limit (sweep/jobs.py), so Lightning's auto-requeue stays off there. Outside a job, the
    hint Lightning gives on every machine with SLURM installed, from its environment detection and
    again before every fit, validate and predict (looking for an HPC checkpoint), is filtered out:
    there is no job to launch with srun."""
    if "SLURM_JOB_ID" not in os.environ:
        warnings.filterwarnings("ignore", message=re.escape(SRUN_HINT), category=PossibleUserWarning)
        return None
    submitit_job = os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and SLURMEnvironment.detect()
    return SLURMEnvironment(auto_requeue=False) if submitit_job else None


def external_launch() -> Optional[ClusterEnvironment]:
    """The cluster environment of a launch that started several ranks itself, as Lightning
    detects it (_environments); None for one process or Lightning's own launcher (which hands its
    choice to the ranks it starts through the environment)."""
    for environment in _environments():
        if environment.detect():
            try:
                found = environment()
                return found if found.world_size() > 1 else None
            except (KeyError, ValueError):  # e.g. SLURM_NTASKS in an allocation without srun
                return None
    return None


def _store(environment: ClusterEnvironment, timeout: timedelta) -> TCPStore:
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun: every rank a client
    host, port = environment.main_address, environment.main_port
    hosting = not agent_hosts and environment.global_rank() == 0
    if (host, port, hosting) not in _stores:
        try:
            _stores[host, port, hosting] = TCPStore(
                host, port, is_master=hosting, timeout=timeout, wait_for_workers=False, multi_tenant=hosting
            )
        except DistError as err:  # the store or the network timed out
            raise TimeoutError(
                f"rank {environment.global_rank()}: no c10d store at {host}:{port} within "
                f"{timeout.total_seconds():g} s (is global rank 0 running?): {err}"
            ) from err
    return _stores[host, port, hosting]


def agree_across_ranks(
    name: str,
    decide: Callable[[], Any],
    environment: Optional[ClusterEnvironment] = None,
    timeout: timedelta = AGREEMENT_TIMEOUT,
) -> Any:
    """`decide()` (JSON-able) on global rank 0 of an external launch, the same value on every
    rank; just `decide()` otherwise. Every rank must make the same calls in the same order (the
    n-th call of `name` on each rank is one agreement). A failure of rank 0's `decide` is raised
    on every rank; a rank 0 that never answers, after `timeout`."""
    environment = environment or external_launch()
    if environment is None:
        return decide()
    store, rank = _store(environment, timeout), environment.global_rank()
    # torchrun's agent store outlives restarted workers: their keys must not meet the old ones
    prefix = f"flythinker/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{name}"
    key = f"{prefix}/{store.add(f'{prefix}/calls/rank{rank}', 1)}"
    if rank == 0:
        try:
            value = decide()
        except Exception as err:
            store.set(key, json.dumps({"error": f"{type(err).__name__}: {err}"}))
            raise
        store.set(key, json.dumps({"value": value}))
        return value
    try:
        store.wait([key], timeout)
    except DistError as err:  # the store or the network timed out
        raise TimeoutError(
            f"rank {rank}: global rank 0 did not publish '{name}' within {timeout.total_seconds():g} s "
            f"(store {environment.main_address}:{environment.main_port}, key {key}); "
            "see rank 0's log"
        ) from err
    answer = json.loads(store.get(key))
    if "error" in answer:
        raise RuntimeError(f"rank {rank}: global rank 0 failed deciding '{name}': {answer['error']}")
    return answer["value"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a local checkpoint to a temporary file beside it, synced, then renames it into
    place (atomic within a filesystem): a kill mid-write leaves the previous checkpoint whole.
    Lightning's own save writes its temporary file to the system temp dir; moving it to a run dir
    on another filesystem (node-local /tmp -> shared storage on a cluster) is a copy, which a kill
    can leave half-written, and a kill before the move leaves the whole temporary file behind."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or get_protocol(str(path)) != "file":
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote stores: Lightning's way
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        with open(partial, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)


def processes(cfg: Config) -> int:
    """How many processes (ranks) a run of `cfg` uses: devices per node, as Lightning counts them, x nodes."""
    devices = cfg.trainer.devices
    if devices in ("auto", -1, "-1"):
        on_gpu = cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        devices = torch.cuda.device_count() if on_gpu else 1
    elif isinstance(devices, str) and "," in devices:  # "0,1": device indices
        devices = len([index for index in devices.split(",") if index.strip()])
    elif isinstance(devices, (list, tuple)):  # [0, 1]: device indices
        devices = len(devices)
    return int(devices) * cfg.trainer.num_nodes
