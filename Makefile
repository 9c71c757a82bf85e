# kubefusion developer entry points. Every target sets itself up from nothing but Python 3.11 and make.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REQS := requirements/trainer.txt requirements/operator.txt requirements/dev.txt \
        trainer/pyproject.toml operator/pyproject.toml

# Nothing reaches a model hub at run time: weights come from local paths or caches.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help venv tools demo test test-fast lint clean

help:
	@echo "make demo   - set up, then train the local demo job on built-in demo data"
	@echo "make test   - set up, then run the whole test suite"

$(STAMP): $(REQS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements/trainer.txt -r requirements/operator.txt -r requirements/dev.txt
	$(BIN)/python -m pip install -q --no-deps -e trainer -e operator
	@touch $@

venv: $(STAMP)

tools: venv
	@bash scripts/install-tools.sh

demo: venv
	$(BIN)/kubefusion run examples/local-job.yaml --local --output runs/demo

test: venv tools
	$(BIN)/python -m pytest

test-fast: venv
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) .tools runs .pytest_cache
