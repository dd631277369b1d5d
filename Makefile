# Every target runs inside .venv, made by `make setup`.
VENV   := .venv
PYTHON := $(VENV)/bin/python
RECIPE ?= recipes/glue/sst2-minilm.yaml
ARGS   ?=

# Hub dataset ids resolve to the shared local copies when they are beside the repo (see README).
ifneq ($(wildcard ../shared/data/MANIFEST.md),)
export FINETUNE_DATA_MIRROR ?= $(abspath ../shared/data)
endif

.PHONY: setup finetune test bench docs
setup:
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[dev]"

finetune:
	$(VENV)/bin/finetune train $(RECIPE) $(ARGS)

test:
	$(PYTHON) -m pytest -q

bench:
	$(PYTHON) bench/validate_speed.py
	$(PYTHON) bench/glue.py

docs:
	$(VENV)/bin/finetune recipe --schema > docs/recipe.md
