# flythinker-pl front door. `make help` lists every target.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
FLY := $(PY) -m flythinker_pl.cli
STAMP := $(VENV)/.installed
# The embedded default needs no model hub; offline avoids a ~50 s hub lookup timeout.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
export PYTHONUNBUFFERED := 1

.PHONY: help install demo test test-all bench-train pretrain tensorboard constraints clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): requirements.txt constraints.txt setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install pinned dependencies (idempotent)

demo: $(STAMP) ## main job on the embedded default: pretrain tiny backbones, train SFT + FlyThinker, compare
	$(OFFLINE) $(FLY) fit -c experiments/demo_sft.yaml
	$(OFFLINE) $(FLY) fit -c experiments/demo.yaml
	@echo; echo "Validation after training (newest finished runs):"
	@$(OFFLINE) $(FLY) table lightning_logs/demo_sft lightning_logs/demo
	@echo; echo "TensorBoard: $(VENV)/bin/tensorboard --logdir lightning_logs"

test: $(STAMP) ## fast test suite (what CI runs)
	$(OFFLINE) $(PY) -m pytest -q

test-all: $(STAMP) ## every test, including slow end-to-end ones
	$(OFFLINE) $(PY) -m pytest -q -m ""

bench-train: $(STAMP) ## training tokens/s: SFT vs FlyThinker (Reasoner frozen/LoRA/full), table + bench/train.json
	$(OFFLINE) $(FLY) bench train -c experiments/demo.yaml --out bench/train.json

pretrain: $(STAMP) ## build and cache the demo's tiny backbones only
	$(OFFLINE) $(FLY) pretrain -c experiments/demo.yaml

tensorboard: $(STAMP) ## open TensorBoard on lightning_logs/
	$(VENV)/bin/tensorboard --logdir lightning_logs

constraints: $(STAMP) ## regenerate constraints.txt from the current venv
	$(PY) -m pip freeze --exclude-editable | sed '1i # Exact pins (regenerate with make constraints); torch is the CPU build: an unpinned torch pulls GBs of CUDA packages.' > constraints.txt

clean: ## remove run outputs, benchmarks and generated data (keeps .venv and the model cache)
	rm -rf lightning_logs/*/ bench/ data/synthetic
