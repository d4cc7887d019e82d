"""trainer.strategy=fsdp: FSDP2 (`fully_shard`) through Lightning's ModelParallelStrategy.

Every rank holds 1/N of each parameter, its gradient and its optimiser state; batches are split
across all N ranks as under DDP. Each decoder layer of each backbone is its own FSDP unit; the
method itself (what is left: the embedding tables, tied LM heads, final norms, the fusion) is the
root unit. The root is gathered for the whole of the method's forward, so the Generator's embedding
lookup (done before the Generator runs: z_j = e(x_j) + lam P(r_{j-1})) and the rescale constant c
(the mean row norm of the whole table) both read the full table, and the lookup's gradient is
reduced with the root's at the end of backward. (The official code's ZeRO-3 run read the table
outside any forward, where it was released: c was 0 and nothing was injected.)

Checkpoints are sharded (one file per rank in a `last.ckpt/` directory), written beside the old one
and swapped in, so a kill mid-save keeps the previous checkpoint whole. At the end of fit the
trainable weights are exported to `checkpoints/weights.ckpt`, an ordinary checkpoint that
`flythinker predict` loads on one process or under DDP.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

EXPORT_NAME = "weights.ckpt"  # beside the sharded last.ckpt/


class ShardedDataParallel(ModelParallelStrategy):
    """ModelParallelStrategy with the whole world as one data-parallel (sharding) dimension."""

    def setup_environment(self) -> None:
        self._data_parallel_size, self._tensor_parallel_size = self.num_nodes * self.num_processes, 1
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Optional[Any] = None) -> None:
        """Written into `<path>.partial/`, then swapped in for `<path>`."""
        path = Path(self.broadcast(str(filepath)))
        staging = path.with_name(path.name + ".partial")
        if self.is_global_zero:
            shutil.rmtree(staging, ignore_errors=True)
        self.barrier("fsdp_checkpoint_staging")
        super().save_checkpoint(checkpoint, staging, storage_options)
        self.barrier("fsdp_checkpoint_written")
        if self.is_global_zero:
            previous = path.with_name(path.name + ".previous")
            if path.exists():
                path.rename(previous)
            staging.rename(path)
            shutil.rmtree(previous, ignore_errors=True)
        self.barrier("fsdp_checkpoint_swapped")

    def load_checkpoint(self, checkpoint_path, weights_only: Optional[bool] = None) -> dict[str, Any]:
        """A sharded checkpoint holds the trainable weights only (MethodModule.on_save_checkpoint): load
        those into the sharded model, keep the rest as built; then the optimiser states. Returns the
        rest of the checkpoint (loops, callbacks, ...) and the weights it held."""
        from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader, load
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        path = Path(self.broadcast(str(checkpoint_path)))
        if not path.is_dir():  # an ordinary (whole) checkpoint, e.g. from DDP
            return super().load_checkpoint(path, weights_only)
        model = {"state_dict": get_model_state_dict(self.model)}
        load(model, checkpoint_id=path, planner=DefaultLoadPlanner(allow_partial_load=True))
        set_model_state_dict(self.model, model["state_dict"])
        saved = {key.removeprefix("state_dict.") for key in FileSystemReader(path).read_metadata().state_dict_metadata}
        for index, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{index}"
            state = {key: get_optimizer_state_dict(self.model, optimizer)}
            load(state, checkpoint_id=path)
            set_optimizer_state_dict(self.model, optimizer, state[key], options=StateDictOptions(cpu_offload=True))
        checkpoint = torch.load(path / "meta.pt", weights_only=weights_only)
        # what the checkpoint held, for MethodModule.on_load_checkpoint's check of the trainable weights
        return {**checkpoint, "state_dict": {k: v for k, v in model["state_dict"].items() if k in saved}}


def decoder_layer_types(method: nn.Module) -> tuple[type, ...]:
    """The classes Hugging Face marks as not to be split across devices (`_no_split_modules`):
    the decoder layers of every backbone inside the method."""
    names = {name for module in method.modules() for name in (getattr(module, "_no_split_modules", None) or ())}
    return tuple({type(module) for module in method.modules() if type(module).__name__ in names})


def shard(method: nn.Module, mesh, precision: str) -> nn.Module:
    """fully_shard each decoder layer, then the method as the root unit. bf16 precisions gather
    parameters in bf16 and reduce gradients in fp32."""
    if isinstance(method, FSDPModule):
        return method
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if precision.startswith("bf16")
        else MixedPrecisionPolicy()
    )
    layer_types = decoder_layer_types(method)
    if not layer_types:
        raise RuntimeError(
            "trainer.strategy=fsdp shards the backbones per decoder layer, but no module of this "
            "method is a Hugging Face decoder layer (`_no_split_modules`)"
        )
    for module in list(method.modules()):
        if isinstance(module, layer_types):
            fully_shard(module, mesh=mesh, mp_policy=policy)
    return fully_shard(method, mesh=mesh, mp_policy=policy)


def local_shapes(method: nn.Module) -> dict[str, tuple[list[int], list[int]]]:
    """name -> (this rank's shard shape, the whole parameter's shape), for checking what each rank holds."""
    return {
        name: (list(p.to_local().shape) if hasattr(p, "to_local") else list(p.shape), list(p.shape))
        for name, p in method.named_parameters()
    }


def export_weights(sharded: Path, out: Path) -> Path:
    """The sharded checkpoint's trainable weights as one ordinary checkpoint file (no optimiser state):
    what `predict` loads on any number of processes. Runs on one process, no process group."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    whole = out.with_name(out.name + ".whole")
    dcp_to_torch_save(sharded, whole)
    state = torch.load(whole, map_location="cpu", weights_only=False)
    whole.unlink()
    checkpoint = torch.load(sharded / "meta.pt", map_location="cpu", weights_only=False)
    checkpoint["state_dict"] = state["state_dict"]
    torch.save(checkpoint, out)
    return out
