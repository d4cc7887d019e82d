"""trainer.strategy=fsdp (lit/sharding.py): FSDP2 shards on 2 CPU processes (gloo).

The unit test shards a FlyThinker whose weights are all trainable (Generator and Reasoner full) and
compares it with the same model unsharded: what each rank holds, the rescale constant c, logits and
gradients, and lambda = 0 against SFT. The end-to-end tests (slow) train through Lightning."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh

from flythinker_pl.config import load_config
from flythinker_pl.lit.module import response_loss
from flythinker_pl.lit.sharding import local_shapes, shard
from flythinker_pl.models.fusion import embedding_norm
from flythinker_pl.models.sft import SFT

from helpers import DEBUG_CONFIG, ENV, ROOT, fit_cli, fit_command, left_padded, metrics_of


def _loss(method, ids, mask, prompt_len) -> tuple[torch.Tensor, torch.Tensor]:
    logits = method(ids, mask, prompt_len)
    labels = ids.masked_fill(mask == 0, -100)
    return logits, response_loss(logits, labels)[0]


def _full(tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _fsdp_worker(rank: int, world_size: int, init_file: str, out_dir: str, make, batch) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        mesh = init_device_mesh("cpu", (world_size,))
        ids, mask, prompt_len = batch
        method = make()  # the same seeded weights on every rank
        whole = copy.deepcopy(method)
        sharded = shard(method, mesh, "32-true")
        shapes = local_shapes(sharded)
        sharded_c = float(embedding_norm(sharded.generator.get_input_embeddings()))  # a shard, outside forward

        expected_logits, expected_loss = _loss(whole, ids, mask, prompt_len)
        expected_loss.backward()
        logits, loss = _loss(sharded, ids, mask, prompt_len)  # every rank the same batch: grads average to it
        loss.backward()
        grads = {
            name: (_full(p.grad) - q.grad).abs().max().item() / q.grad.abs().max().clamp(min=1e-12).item()
            for (name, p), (_, q) in zip(sharded.named_parameters(), whole.named_parameters())
            if q.grad is not None
        }

        silent = make(lam=0.0)  # lambda = 0 under FSDP is SFT under FSDP (the same Generator weights)
        sft = SFT(copy.deepcopy(silent.generator))
        silent_logits = shard(silent, mesh, "32-true")(ids, mask, prompt_len)
        sft_logits = shard(sft, mesh, "32-true")(ids, mask, prompt_len)
        with open(f"{out_dir}/rank{rank}.json", "w") as out:
            json.dump(
                {
                    "shapes": shapes,
                    "c": sharded_c,
                    "full_c": float(embedding_norm(whole.generator.get_input_embeddings())),
                    "logits": (logits - expected_logits).abs().max().item(),
                    "loss": [loss.item(), expected_loss.item()],
                    "grads": grads,
                    "lam0_vs_sft": (silent_logits - sft_logits).abs().max().item(),
                },
                out,
            )
    finally:
        dist.destroy_process_group()


def test_sharded_flythinker_holds_half_of_each_weight_and_computes_the_same_function(
    tokenizer, make_flythinker, tmp_path
):
    vocab = len(tokenizer)  # 600 rows: shards of 300; the Reasoner's 32-d and the Generator's 64-d layers halve too
    rows = [[(7 * i + 3 * j) % (vocab - 3) + 3 for j in range(length)] for i, length in enumerate((9, 14, 11))]
    ids, mask = left_padded(rows, tokenizer.pad_token_id)
    batch = (ids, mask, torch.tensor([4, 6, 5]))
    # fork: the workers inherit the tokenizer and the model factory (as Lightning's ddp_fork)
    mp.start_processes(
        _fsdp_worker,
        args=(2, str(tmp_path / "init"), str(tmp_path), make_flythinker, batch),
        nprocs=2,
        start_method="fork",
    )
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    for rank, result in enumerate(ranks):
        for name, (local, whole) in result["shapes"].items():  # dim 0 split in two, the rest whole
            assert local == [math.ceil(whole[0] / 2) if rank == 0 else whole[0] // 2, *whole[1:]], name
        assert result["c"] == pytest.approx(result["full_c"], rel=1e-6) and result["full_c"] > 0
        assert result["logits"] < 1e-5 and result["loss"][0] == pytest.approx(result["loss"][1], rel=1e-6)
        assert len(result["grads"]) == len(result["shapes"]) and max(result["grads"].values()) < 1e-4, result["grads"]
        assert result["lam0_vs_sft"] == 0.0


def test_zero3_is_refused_at_config_time_naming_fsdp():
    from flythinker_pl.config import ConfigError

    with pytest.raises(ConfigError, match="trainer.strategy=fsdp"):
        load_config(DEBUG_CONFIG, ["trainer.strategy=deepspeed_stage_3"])


# ---- end to end: 2-process fits through Lightning's launcher (slow) ----


SHORT = ["trainer.max_steps=8", "trainer.val_check_interval=4", "trainer.limit_val_batches=1.0"]
DDP = ["data.batch_size=4", "trainer.devices=2", "trainer.strategy=ddp", *SHORT]
FSDP = ["data.batch_size=4", "trainer.devices=2", "trainer.strategy=fsdp", *SHORT]
MODES = {
    "lora+frozen": ["generator.mode=lora", "reasoner.mode=frozen"],
    "full+full": ["generator.mode=full", "reasoner.mode=full"],  # clipped at train.grad_clip=1 too
    "lora+lora, accumulate 2": ["generator.mode=lora", "reasoner.mode=lora", "train.accumulate=2"],
}


@pytest.fixture(scope="module")
def fsdp_runs(settings, tmp_path_factory) -> dict:
    """Run dir of each (strategy, modes) fit, trained once for the tests below."""
    runs = {}
    for modes, overrides in MODES.items():
        for name, strategy in (("ddp", DDP), ("fsdp", FSDP)):
            root = tmp_path_factory.mktemp(f"{name}-{modes}")
            fit_cli(fit_command(settings, root, *strategy, *overrides))
            runs[name, modes] = next((root / "tiny").glob("version_*"))
    return runs


@pytest.mark.slow  # multi-process: make test-slow runs it, and CI
@pytest.mark.parametrize("modes", list(MODES))
def test_fsdp_reaches_the_validation_loss_of_ddp(fsdp_runs, modes):
    """The same global batches, weights and validation records; FSDP reduces (reduce-scatter) in another
    order than DDP's all-reduce, so the two differ in rounding only."""
    ddp, fsdp = (json.loads((fsdp_runs[name, modes] / "metrics.json").read_text()) for name in ("ddp", "fsdp"))
    assert fsdp["global_step"] == ddp["global_step"] == 8
    assert fsdp["val/loss_before"] == pytest.approx(ddp["val/loss_before"], rel=1e-6)
    assert fsdp["val/loss"] == pytest.approx(ddp["val/loss"], rel=1e-5)
    assert fsdp["val/loss"] < fsdp["val/loss_before"]
    assert (fsdp_runs["fsdp", modes] / "checkpoints" / "last.ckpt").is_dir()  # sharded: one file per rank


@pytest.mark.slow
def test_exported_fsdp_weights_decode_on_one_process_as_ddp_checkpoints_do(fsdp_runs, settings, tmp_path):
    fsdp_run, ddp_run = fsdp_runs["fsdp", "full+full"], fsdp_runs["ddp", "full+full"]
    exported = torch.load(fsdp_run / "checkpoints" / "weights.ckpt", weights_only=False)
    ddp_checkpoint = torch.load(ddp_run / "checkpoints" / "last.ckpt", weights_only=False)
    assert set(exported["state_dict"]) == set(ddp_checkpoint["state_dict"])  # the trainable weights, whole
    assert all(exported["state_dict"][k].shape == v.shape for k, v in ddp_checkpoint["state_dict"].items())
    as_ddp = tmp_path / "tiny" / "version_0" / "checkpoints" / "last.ckpt"  # the exported weights in a DDP checkpoint
    as_ddp.parent.mkdir(parents=True)
    torch.save({**ddp_checkpoint, "state_dict": exported["state_dict"]}, as_ddp)
    outputs = []
    for checkpoint in (fsdp_run / "checkpoints" / "weights.ckpt", as_ddp):  # one process each
        command = fit_command(
            settings, tmp_path, *MODES["full+full"], "decode.max_new_tokens=8", f"ckpt_path={checkpoint}"
        )
        fit_cli([*command[:3], "predict", *command[4:]])
        predictions = (checkpoint.parent.parent / "predictions.jsonl").read_text().splitlines()
        outputs.append([json.loads(line)["prediction"] for line in predictions])
    assert outputs[0] == outputs[1] and len(outputs[0]) == 10


@pytest.mark.slow
def test_a_sigkilled_fsdp_fit_rerun_ends_as_if_never_interrupted(fsdp_runs, settings, tmp_path):
    import signal
    import subprocess
    import time

    command = fit_command(settings, tmp_path, *FSDP, *MODES["lora+frozen"])
    run_dir = tmp_path / "tiny" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    with open(tmp_path / "killed.log", "w") as log:
        killed = subprocess.Popen(
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True
        )
        deadline = time.time() + 300
        while not (last / "meta.pt").exists() and killed.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        os_kill_group(killed.pid, signal.SIGKILL)  # both ranks, as a node failure would
        killed.wait()
    assert not (run_dir / "metrics.json").exists(), (tmp_path / "killed.log").read_text()[-3000:]
    done = fit_cli(command)
    assert f"Resuming {run_dir} from {last}" in done.stdout
    resumed = metrics_of(tmp_path)
    uninterrupted = json.loads((fsdp_runs["fsdp", "lora+frozen"] / "metrics.json").read_text())
    assert resumed["global_step"] == 8
    assert {k: v for k, v in resumed.items() if k.startswith("val/")} == pytest.approx(
        {k: v for k, v in uninterrupted.items() if k.startswith("val/")}, rel=1e-6
    )


def os_kill_group(pid: int, sig: int) -> None:
    import os

    os.killpg(os.getpgid(pid), sig)


def test_the_slurm_template_launches_multi_node_fsdp(tmp_path):
    from test_scaleout import SLURM_JOB, cli_call, launches

    [srun] = launches(
        "train.sbatch",
        tmp_path,
        "experiments/gpu/longlamp_qwen.yaml",
        "trainer.strategy=fsdp",
        "generator.mode=full",
        "reasoner.mode=full",
        **SLURM_JOB,
    )
    args, cfg = cli_call(srun)
    assert args.command == "fit" and cfg.train.resume == "auto"
    assert (cfg.trainer.devices, cfg.trainer.num_nodes, cfg.trainer.strategy) == (4, 2, "fsdp")
    assert (cfg.generator.mode, cfg.reasoner.mode) == ("full", "full")


def test_memory_command_shows_fsdp_dividing_what_ddp_holds_per_rank(capsys):
    from flythinker_pl.cli import main

    assert (
        main(
            [
                "memory",
                "-c",
                "experiments/gpu/longlamp_qwen.yaml",
                "generator.mode=full",
                "reasoner.mode=full",
                "trainer.devices=8",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "3.58 B parameters, 3.58 B trainable" in printed  # Qwen2.5-3B + 0.5B (d_R pad: no projection)
    rows = {
        line.split("|")[1].strip() + line.split("|")[2].strip(): [float(x) for x in line.split("|")[3:8]]
        for line in printed.splitlines()
        if line.startswith("| ddp") or line.startswith("| fsdp")
    }
    ddp, fsdp = rows["ddpany"], rows["fsdp8"]
    assert ddp[0] == pytest.approx(3.58e9 * 4 / 1024**3, rel=0.01)  # fp32 weights
    assert ddp[2] == pytest.approx(2 * ddp[1], abs=0.02) and ddp[1] == ddp[0]  # all trainable; AdamW: 2 moments
    assert [f * 8 for f in fsdp[:3]] == pytest.approx(ddp[:3], abs=0.05)
