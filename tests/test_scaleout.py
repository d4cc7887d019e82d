"""Scale-out: 2-process CPU DDP (gloo) == 1 process, an exact resume after SIGKILL, one run dir
for the ranks of a torchrun launch, the SLURM templates.

Seeds per rank: every rank builds the model from the same `seed` (and DDP broadcasts rank 0's
weights anyway), so `val/loss_before` of a DDP run equals the single process's; the data differ
per rank (each takes its share of every global batch: the sampler tests); decoding draws each
sample from its own stream seeded by (decode.seed, id), the same on any number of ranks
(tests/test_predict.py)."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.utilities import rank_zero_only

from flythinker_pl.cli import build_parser
from flythinker_pl.config import load_config, to_yaml
from flythinker_pl.data.batching import LengthBucketSampler
from flythinker_pl.data.sampling import GlobalBatchSampler, ResumableDataLoader
from flythinker_pl.lit.launch import AtomicCheckpointIO, agree_across_ranks, external_launch
from flythinker_pl.lit.run import build, build_trainer
from flythinker_pl.lit.rundirs import choose_run_dir

from helpers import DEBUG_CONFIG, ENV, ROOT, RUN, fit_cli, fit_command, metrics_of


LENGTHS = [(37 * n) % 101 + 5 for n in range(83)]  # 83: the last global batch of 8 is partial
SLURM = ROOT / "experiments" / "slurm"
ONE_RANK = ["data.batch_size=8", "trainer.devices=1"]
TWO_RANKS = ["data.batch_size=4", "trainer.devices=2", "trainer.strategy=ddp"]


def sampler(bucketed: bool, batch_size: int, num_replicas: int = 1, rank: int = 0):
    if bucketed:
        return LengthBucketSampler(LENGTHS, batch_size, chunk_batches=3, seed=5, num_replicas=num_replicas, rank=rank)
    return GlobalBatchSampler(len(LENGTHS), batch_size, seed=5, num_replicas=num_replicas, rank=rank)


def batches_of(sampler_, epoch: int) -> list[list[int]]:
    sampler_.set_epoch(epoch)
    order = list(sampler_)
    return [order[i : i + sampler_.batch_size] for i in range(0, len(order), sampler_.batch_size)]


@pytest.mark.parametrize("bucketed", [False, True])
def test_two_ranks_of_4_see_the_global_batches_of_one_rank_of_8(bucketed):
    for epoch in (0, 1):
        one = batches_of(sampler(bucketed, 8), epoch)
        two = [batches_of(sampler(bucketed, 4, 2, rank), epoch) for rank in (0, 1)]
        assert len(two[0]) == len(two[1]) == len(one)  # every rank takes the same number of steps
        for step, batch in enumerate(one[:-1]):  # full global batches: split between the ranks
            assert sorted(two[0][step] + two[1][step]) == sorted(batch)
        assert set(two[0][-1] + two[1][-1]) == set(one[-1])  # the partial one, padded from itself
        assert sorted(i for b in one for i in b) == list(range(len(LENGTHS)))  # an epoch = every example once
    assert batches_of(sampler(bucketed, 8), 0) != batches_of(sampler(bucketed, 8), 1)


def test_length_buckets_keep_both_ranks_batches_short_of_padding():
    shards = [batches_of(sampler(True, 4, 2, rank), 0) for rank in (0, 1)]
    plain = [batches_of(sampler(False, 4, 2, rank), 0) for rank in (0, 1)]

    def padding(batches):
        return sum(max(LENGTHS[i] for i in b) * len(b) - sum(LENGTHS[i] for i in b) for b in batches)

    assert all(padding(shards[r]) < 0.5 * padding(plain[r]) for r in (0, 1))


def loader(bucketed: bool, num_workers: int = 0) -> ResumableDataLoader:
    return ResumableDataLoader(
        list(range(len(LENGTHS))), batch_size=4, sampler=sampler(bucketed, 4), num_workers=num_workers
    )


def epochs_from(loader_: ResumableDataLoader, first_epoch: int, last_epoch: int) -> list[list[int]]:
    """What Lightning does each epoch: set the sampler's epoch, then iterate."""
    seen = []
    for epoch in range(first_epoch, last_epoch + 1):
        loader_.sampler.set_epoch(epoch)
        seen += [batch.tolist() for batch in loader_]
    return seen


@pytest.mark.parametrize("bucketed,num_workers", [(False, 0), (True, 0), (True, 2)])
@pytest.mark.parametrize("stop_after", [7, 21, 22])  # batches done: mid-epoch 0, end of epoch 0, epoch 1
def test_a_resumed_loader_continues_exactly_where_its_state_was_saved(bucketed, num_workers, stop_after):
    uninterrupted = epochs_from(loader(bucketed), 0, 2)
    interrupted, seen = loader(bucketed, num_workers), []
    for epoch in range(3):
        interrupted.sampler.set_epoch(epoch)  # workers prefetch ahead: the state counts what was handed out
        seen += [batch.tolist() for batch in itertools.islice(interrupted, stop_after - len(seen))]
        if len(seen) == stop_after:
            break
    state = interrupted.state_dict()
    assert seen == uninterrupted[:stop_after]
    resumed = loader(bucketed, num_workers)
    resumed.load_state_dict(state)
    at_end = state["batches"] == len(resumed)  # Lightning resumes such a checkpoint with the next epoch
    assert seen + epochs_from(resumed, state["epoch"] + at_end, 2) == uninterrupted


def test_only_a_global_batch_sampler_can_be_resumed():
    with pytest.raises(TypeError, match="GlobalBatchSampler"):
        ResumableDataLoader(list(range(8)), batch_size=2, shuffle=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rank_of_two(rank: int) -> LightningEnvironment:
    environment = LightningEnvironment()  # address and port from MASTER_ADDR / MASTER_PORT
    environment.set_world_size(2)
    environment.set_global_rank(rank)
    return environment


def on_ranks(decide_on, ranks=(1, 0), timeout=30):
    """agree_across_ranks on each of `ranks`, in threads; their results or exceptions."""

    def run(rank):
        try:
            return agree_across_ranks("run_dir", lambda: decide_on(rank), rank_of_two(rank), timedelta(seconds=timeout))
        except Exception as err:
            return err

    this_process = rank_zero_only.rank  # set_global_rank sets this process-wide: restore it for later tests
    try:
        with ThreadPoolExecutor(len(ranks)) as pool:
            return dict(zip(ranks, pool.map(run, ranks)))
    finally:
        rank_zero_only.rank = this_process


def test_every_rank_takes_rank_zeros_decision(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    asked = []

    def decide(rank):
        asked.append(rank)
        return [f"lightning_logs/x/version_{rank}", None]

    for _ in range(2):  # the n-th call on each rank is one agreement
        assert on_ranks(decide) == {1: ["lightning_logs/x/version_0", None], 0: ["lightning_logs/x/version_0", None]}
    assert asked == [0, 0]


def test_a_failure_of_rank_zero_is_raised_on_every_rank_and_a_silent_one_times_out(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))

    def decide(rank):
        raise ValueError("unknown config key 'x'")

    results = on_ranks(decide)
    assert isinstance(results[0], ValueError)
    assert isinstance(results[1], RuntimeError) and "rank 0 failed deciding 'run_dir': ValueError" in str(results[1])
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    alone = on_ranks(decide, ranks=(1,), timeout=1)[1]
    assert isinstance(alone, TimeoutError) and "rank 0" in str(alone), alone


def test_srun_tasks_are_recognised_as_an_external_launch(monkeypatch):
    for name in [n for n in os.environ if n.startswith(("SLURM_", "TORCHELASTIC_")) or n in ("RANK", "LOCAL_RANK")]:
        monkeypatch.delenv(name)
    srun_task = {
        "SLURM_JOB_NAME": "flythinker-train",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "0",
    }
    for name, value in srun_task.items():
        monkeypatch.setenv(name, value)
    found = external_launch()
    assert isinstance(found, SLURMEnvironment) and (found.global_rank(), found.world_size()) == (1, 2)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert external_launch() is None  # one task: nothing to agree on


def test_resume_continues_from_the_newest_checkpoint_of_the_unfinished_run(run_config):
    cfg = run_config()
    run_dir = Path(cfg.logging.root_dir) / cfg.logging.experiment / "version_0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    last, preempted = run_dir / "checkpoints" / "last.ckpt", run_dir / "hpc_ckpt_1.ckpt"
    for age, path in ((20, last), (10, preempted)):
        path.write_bytes(b"")
        os.utime(path, (time.time() - age, time.time() - age))
    assert choose_run_dir(cfg) == (run_dir, str(preempted))  # saved on SLURM's signal, after last.ckpt
    os.utime(last)
    assert choose_run_dir(cfg) == (run_dir, str(last))


def test_a_checkpoint_write_killed_midway_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    path, io = tmp_path / "checkpoints" / "last.ckpt", AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 4}, path)

    def killed_while_writing(obj, file):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", killed_while_writing)
        with pytest.raises(KeyboardInterrupt):
            io.save_checkpoint({"global_step": 8}, path)
    assert torch.load(path)["global_step"] == 4
    io.save_checkpoint({"global_step": 12}, path)
    assert torch.load(path)["global_step"] == 12


def test_lightning_saves_and_resumes_through_the_atomic_writer(tmp_path):
    def trainer(max_steps):
        return L.Trainer(
            max_steps=max_steps,
            plugins=[AtomicCheckpointIO()],
            default_root_dir=tmp_path,
            logger=False,
            callbacks=[ModelCheckpoint(tmp_path / "checkpoints", save_last=True)],
            enable_progress_bar=False,
            enable_model_summary=False,
        )

    trainer(2).fit(BoringModel())
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    resumed = trainer(3)
    resumed.fit(BoringModel(), ckpt_path=tmp_path / "checkpoints" / "last.ckpt")
    assert resumed.global_step == 3


@pytest.mark.parametrize("ranks", [ONE_RANK, TWO_RANKS], ids=["one_rank", "ddp"])
def test_the_frameworks_trainer_saves_through_the_atomic_writer(run_config, tmp_path, ranks):
    """(A kill mid-save: test_a_kill_during_a_checkpoint_write_leaves_the_previous_last_ckpt_whole.)"""
    trainer = build_trainer(run_config(*ranks), tmp_path / "tiny" / "version_0")
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# ---- the SLURM / torchrun templates: valid bash that launches the CLI with existing keys ----


def launches(script: str, tmp_path: Path, *args: str, **env: str) -> list[list[str]]:
    """Runs a template with `srun` and the Python interpreter replaced by recorders; the commands."""
    record, bin_dir = tmp_path / "record", tmp_path / "bin"
    record.mkdir()
    bin_dir.mkdir()
    recorder = bin_dir / "recorder"
    recorder.write_text('#!/bin/bash\nprintf "%s\\n" "$(basename "$0")" "$@" > "$RECORD/$(ls "$RECORD" | wc -l)"\n')
    recorder.chmod(0o755)
    (bin_dir / "srun").symlink_to(recorder)
    (bin_dir / "python").symlink_to(recorder)
    done = subprocess.run(
        ["bash", str(SLURM / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "RECORD": str(record),
            "PYTHON": str(bin_dir / "python"),
            **env,
        },
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [(record / str(n)).read_text().splitlines() for n in range(len(list(record.iterdir())))]


def cli_call(argv: list[str]):
    """The parsed `flythinker_pl.cli` command of a recorded launch, and its config."""
    module = argv.index("flythinker_pl.cli")
    args = build_parser().parse_args(argv[module + 1 :])
    overrides = [o for o in getattr(args, "overrides", []) if not o.startswith("ckpt_path=")]
    return args, load_config(args.config, overrides) if getattr(args, "config", None) else None


SLURM_JOB = {"SLURM_NTASKS_PER_NODE": "4", "SLURM_NNODES": "2", "SLURM_JOB_ID": "77", "SLURM_CPUS_PER_TASK": "8"}


@pytest.mark.parametrize("script", sorted(p.name for p in SLURM.iterdir()))
def test_templates_are_valid_bash(script):
    done = subprocess.run(["bash", "-n", str(SLURM / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_train_sbatch_requeues_and_launches_one_rank_per_task_resuming(tmp_path):
    text = (SLURM / "train.sbatch").read_text()
    assert re.search(r"^#SBATCH --requeue$", text, re.M) and re.search(r"^#SBATCH --signal=SIGUSR1@\d+$", text, re.M)
    [srun] = launches("train.sbatch", tmp_path, "experiments/gpu/longlamp_qwen.yaml", "fusion.lam=1.0", **SLURM_JOB)
    assert srun[0] == "srun"
    args, cfg = cli_call(srun)
    assert args.command == "fit" and cfg.train.resume == "auto" and cfg.fusion.lam == 1.0
    assert (cfg.trainer.devices, cfg.trainer.num_nodes, cfg.trainer.strategy) == (4, 2, "ddp")


def test_predict_sbatch_decodes_on_every_task_then_scores_the_run(tmp_path):
    checkpoint = "lightning_logs/longlamp_qwen/version_3/checkpoints/last.ckpt"
    srun, evaluate = launches("predict.sbatch", tmp_path, "experiments/gpu/longlamp_qwen.yaml", checkpoint, **SLURM_JOB)
    args, cfg = cli_call(srun)
    assert args.command == "predict" and f"ckpt_path={checkpoint}" in args.overrides
    assert (cfg.trainer.devices, cfg.trainer.num_nodes) == (4, 2)
    args, _ = cli_call(evaluate)
    assert args.command == "evaluate" and args.paths == ["lightning_logs/longlamp_qwen/version_3"]


@pytest.mark.parametrize("processes", ["2", None])  # None: one per GPU, at least one
def test_torchrun_example_launches_the_cli_on_n_processes(tmp_path, monkeypatch, processes):
    monkeypatch.delenv("NPROC", raising=False)
    [torchrun] = launches(
        "torchrun.sh",
        tmp_path,
        "experiments/demo.yaml",
        "trainer.accelerator=cpu",
        **({"NPROC": processes} if processes else {}),
    )
    assert torchrun[1:3] == ["-m", "torch.distributed.run"] and "--standalone" in torchrun
    nproc = torchrun[torchrun.index("--nproc-per-node") + 1]
    assert nproc == processes if processes else int(nproc) >= 1
    args, cfg = cli_call(torchrun)
    assert args.command == "fit" and (cfg.trainer.devices, cfg.trainer.strategy) == (int(nproc), "ddp")


# ---- end to end: real processes on the tiny config ----


@pytest.fixture(scope="module")
def one_rank(settings, tmp_path_factory) -> dict:
    """metrics.json of an uninterrupted single-process run, global batch 8."""
    root = tmp_path_factory.mktemp("one_rank")
    fit_cli(fit_command(settings, root, *ONE_RANK))
    return metrics_of(root)


@pytest.fixture(scope="module")
def two_ranks(settings, tmp_path_factory) -> tuple[dict, Path]:
    """metrics.json and run dir of a 2-process DDP run (Lightning's launcher, gloo), global batch 2 x 4."""
    root = tmp_path_factory.mktemp("two_ranks")
    done = fit_cli(fit_command(settings, root, *TWO_RANKS))
    assert "MEMBER: 2/2" in done.stdout + done.stderr  # really two ranks
    return metrics_of(root), next((root / "tiny").glob("version_*"))


@pytest.mark.slow  # multi-process / hundreds of steps: make test-slow runs it, and CI
def test_two_process_ddp_reaches_the_validation_loss_of_one_process(one_rank, two_ranks, settings):
    """Both see the same global batches in the same order (GlobalBatchSampler), start from the same
    weights and validate on the same records, token-weighted across ranks. What remains differs
    only in rounding: gloo sums the ranks' gradients in another order, and each rank's loss is the
    mean over its own response tokens, which DDP then averages, where one process takes the mean
    over all 8 examples' tokens (the ranks' counts differ by up to ~10% here; Adam's per-weight
    scaling leaves little of it). Measured: 3e-7 relative after 20 steps, while merely another
    shuffle (data.seed=1) moves val/loss by 7e-5: hence the 1e-5 tolerance."""
    metrics, run_dir = two_ranks
    assert metrics["global_step"] == one_rank["global_step"] == 20
    assert metrics["val/loss_before"] == pytest.approx(one_rank["val/loss_before"], rel=1e-6)
    assert metrics["val/loss"] == pytest.approx(one_rank["val/loss"], rel=1e-5)
    assert metrics["val/loss"] < metrics["val/loss_before"] - 0.05  # it did train
    # the checkpoint under DDP: adapters and fusion only, plus the training order's place
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    module, _, _ = build(load_config(DEBUG_CONFIG, [*settings, *RUN, *TWO_RANKS]))
    assert set(checkpoint["state_dict"]) == module.trainable_names()
    assert checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 10}]


@pytest.mark.slow  # multi-process / hundreds of steps: make test-slow runs it, and CI
def test_a_sigkilled_fit_rerun_with_the_same_command_ends_as_if_never_interrupted(one_rank, settings, tmp_path):
    command = fit_command(settings, tmp_path, *ONE_RANK)
    run_dir = tmp_path / "tiny" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    with open(tmp_path / "killed.log", "w") as log:
        killed = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=ENV)
        deadline = time.time() + 300
        while not last.exists() and killed.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert killed.returncode == -signal.SIGKILL and not (run_dir / "metrics.json").exists(), (
        tmp_path / "killed.log"
    ).read_text()[-3000:]
    saved = torch.load(last, weights_only=False)
    position = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert saved["global_step"] < 20 and 0 < position["batches"] < 10  # mid-epoch, mid-run

    done = fit_cli(command)  # the same command line
    assert f"Resuming {run_dir} from {last}" in done.stdout
    resumed = metrics_of(tmp_path)  # the same run dir, no new version
    assert resumed["global_step"] == 20 and set(resumed) == set(one_rank)  # the "before" metrics kept
    validation = {k: v for k, v in one_rank.items() if k.startswith("val/")}
    assert {k: resumed[k] for k in validation} == validation  # bit for bit: same weights, order, optimiser state


@pytest.mark.slow  # multi-process / hundreds of steps: make test-slow runs it, and CI
def test_torchrun_ranks_share_one_run_dir_even_when_one_starts_late(two_ranks, settings, tmp_path):
    """Rank 1 starts only once rank 0 has created version_0 (the old race, where rank 1 then chose
    version_1); torchrun's DDP is the same computation as Lightning's launcher's."""
    late_rank = tmp_path / "late_rank.py"
    late_rank.write_text(
        "import os, sys, time\nfrom pathlib import Path\n"
        "if os.environ['RANK'] != '0':\n"
        "    deadline = time.time() + 240\n"
        "    while not list(Path(sys.argv[1]).glob('version_*')) and time.time() < deadline:\n"
        "        time.sleep(0.05)\n"
        "from flythinker_pl.cli import main\nsys.exit(main(sys.argv[2:]))\n"
    )
    root = tmp_path / "logs"
    fit = fit_command(settings, root, *TWO_RANKS)
    done = fit_cli(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(late_rank),
            str(root / "tiny"),
            *fit[fit.index("fit") :],
        ]
    )
    assert re.findall(r"^Run: (.+)$", done.stdout, re.M) == [str(root / "tiny" / "version_0")] * 2
    metrics = metrics_of(root)
    assert metrics["global_step"] == 20
    assert metrics["val/loss"] == pytest.approx(two_ranks[0]["val/loss"], rel=1e-6)


# What a node sees when it is killed while saving: the CLI, with every write that makes last.ckpt in
# CHECKPOINTS (the file itself, or the file that is renamed into it) going through Python's file
# write, copies included (no sendfile), and the first such write once a last.ckpt exists writing
# half its bytes, then stalling until the test kills the process.
STALLED_SAVE = """
import builtins, io, os, shutil, sys, time
from pathlib import Path

checkpoints, stalled = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
shutil._USE_CP_SENDFILE = False
unpatched_open = builtins.open


class HalfWritten(io.FileIO):
    def write(self, data):
        written = super().write(bytes(memoryview(data)[: len(data) // 2]))
        os.fsync(self.fileno())
        stalled.touch()
        time.sleep(600)
        return written


def open_(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, os.PathLike)) and "w" in mode:
        path = Path(file).resolve()
        if path.parent == checkpoints and "last" in path.name and (checkpoints / "last.ckpt").exists():
            return HalfWritten(path, "w")
    return unpatched_open(file, mode, *args, **kwargs)


builtins.open = open_
from flythinker_pl.cli import main
sys.exit(main(sys.argv[3:]))
"""


def other_filesystem(path: Path) -> dict:
    """TMPDIR on another filesystem than `path`, where there is one (tmpfs /dev/shm): as on a cluster
    whose node-local /tmp is not the shared storage of the run dirs, so that moving a temporary file
    from the system temp dir into the run dir is a copy, not a rename."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != path.stat().st_dev:
        return {"TMPDIR": tempfile.mkdtemp(dir=shm)}
    return {}


@pytest.mark.slow  # multi-process / hundreds of steps: make test-slow runs it, and CI
def test_a_kill_during_a_checkpoint_write_leaves_the_previous_last_ckpt_whole(one_rank, settings, tmp_path):
    """Through the framework's own Trainer (build_trainer): the second save of last.ckpt (step 8)
    stalls halfway through its write and the process is SIGKILLed there. last.ckpt is still the
    whole step-4 checkpoint, and the same command resumes from it to the uninterrupted result."""
    command = fit_command(settings, tmp_path, *ONE_RANK)
    run_dir = tmp_path / "tiny" / "version_0"
    last, stalled = run_dir / "checkpoints" / "last.ckpt", tmp_path / "stalled"
    shim = tmp_path / "stalled_save.py"
    shim.write_text(STALLED_SAVE)
    env = {**ENV, **other_filesystem(tmp_path)}
    with open(tmp_path / "killed.log", "w") as log:
        killed = subprocess.Popen(
            [sys.executable, str(shim), str(last.parent), str(stalled), *command[command.index("fit") :]],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            deadline = time.time() + 300
            while not stalled.exists() and killed.poll() is None and time.time() < deadline:
                time.sleep(0.01)
        finally:
            killed.send_signal(signal.SIGKILL)
            killed.wait()
            if "TMPDIR" in env:
                shutil.rmtree(env["TMPDIR"], ignore_errors=True)
    assert stalled.exists() and killed.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert torch.load(last, weights_only=False)["global_step"] == 4  # the previous save, whole

    done = fit_cli(command)  # the same command line
    assert f"Resuming {run_dir} from {last}" in done.stdout
    resumed = metrics_of(tmp_path)
    assert resumed["global_step"] == 20
    validation = {k: v for k, v in one_rank.items() if k.startswith("val/")}
    assert {k: resumed[k] for k in validation} == validation
