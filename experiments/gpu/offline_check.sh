#!/usr/bin/env bash
# `make gpu-check` on a GPU node with no network and its own python3 (a CUDA image holding torch,
# lightning, transformers, peft, pandas, tensorboard, torchmetrics and sacrebleu).
#
#   here (with the registry):  make gpu-wheels        # the wheels such an image lacks -> .gpu-wheels/
#   there (copy the checkout, .gpu-wheels/ included):
#       bash experiments/gpu/offline_check.sh OUT_DIR [--sizes paper|tiny] [--only SECTION ...]
#
# Installs the wheels without network into a scratch folder (the node's python is left untouched),
# then runs the check from the checkout; gpu_check.json and gpu_check.md land in OUT_DIR.
# PYTHON (default python3) and GPU_WHEELS (default .gpu-wheels) override the defaults.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: experiments/gpu/offline_check.sh OUT_DIR [gpu-check options]}
shift
python=${PYTHON:-python3}
wheels=${GPU_WHEELS:-.gpu-wheels}
compgen -G "$wheels/*.whl" >/dev/null || { echo "no wheels in $wheels: run 'make gpu-wheels' where PyPI is reachable" >&2; exit 2; }
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
"$python" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target "$site" "$wheels"/*.whl
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
mkdir -p "$out"
"$python" -m flythinker_pl.cli gpu-check --out "$out/gpu_check.json" "$@"
