#!/bin/bash
# DDP launched by torchrun instead of Lightning (same results; torchrun restarts failed workers):
#   experiments/slurm/torchrun.sh experiments/demo.yaml [key=value ...]        # all GPUs of this machine
#   NPROC=2 experiments/slurm/torchrun.sh experiments/demo.yaml trainer.accelerator=cpu   # 2 CPU processes
#   COMMAND=sweep experiments/slurm/torchrun.sh ablations/reasoner_size_qwen.yaml      # a sweep (or run, predict)
# Several nodes: run it on each with NNODES=<n> RDZV=<host of node 0>:29400 RDZV_ID=<job id>.
# Every rank runs the command; global rank 0 chooses the run dir for all (lit/launch.py), and
# rerunning the same command resumes the unfinished run (train.resume=auto).
set -euo pipefail
config=${1:?usage: [COMMAND=fit|run|predict|sweep] experiments/slurm/torchrun.sh CONFIG.yaml [key=value ...]}
shift
command=${COMMAND:-fit}
if [[ $command == sweep ]]; then target=("$config"); else target=(-c "$config"); fi
gpus=$( (nvidia-smi -L 2>/dev/null || true) | wc -l)
nproc=${NPROC:-$(( gpus > 0 ? gpus : 1 ))}
if [[ -n "${RDZV:-}" ]]; then
    rendezvous=(--nnodes "${NNODES:?set NNODES with RDZV}" --rdzv-backend c10d --rdzv-endpoint "$RDZV"
                --rdzv-id "${RDZV_ID:?set RDZV_ID with RDZV}")
else
    rendezvous=(--standalone)
fi
"${PYTHON:-.venv/bin/python}" -m torch.distributed.run "${rendezvous[@]}" --nproc-per-node "$nproc" \
    -m flythinker_pl.cli "$command" "${target[@]}" \
    trainer.strategy=ddp trainer.devices="$nproc" trainer.num_nodes="${NNODES:-1}" "$@"
