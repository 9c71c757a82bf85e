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

.PHONY: help venv tools demo test test-fast bench lint clean cluster-build cluster cluster-down

help:
	@echo "make demo          - set up, then train the local demo job on built-in demo data"
	@echo "make test          - set up, then run the whole test suite"
	@echo "make bench         - set up, then run every benchmark and write docs/benchmarks.md (SKIP_CLUSTER=1: no Go rows)"
	@echo "make cluster       - start a local control plane with the chart and operator (prints export KUBECONFIG=...)"
	@echo "make cluster-down  - stop it"

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

# The control plane of tests/cluster and `make cluster`, built from cluster/go.mod on first use and kept while
# the pins are unchanged (cluster/build.py; cluster/README.md). Without Go the cluster tier skips itself.
CLUSTER_RUN := .cluster

cluster-build:
	@if command -v go >/dev/null 2>&1; then python3 cluster/build.py >/dev/null; \
	else echo "cluster-build: Go is not installed: the cluster tier (tests/cluster) will be skipped"; fi

cluster: venv tools cluster-build
	@$(BIN)/python cluster/controlplane.py up $(CLUSTER_RUN)

cluster-down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python cluster/controlplane.py down $(CLUSTER_RUN); fi

test: venv tools cluster-build
	$(BIN)/python -m pytest

test-fast: venv
	$(BIN)/python -m pytest -m "not slow"

# Every benchmark as ratios against a same-run baseline; one table in docs/benchmarks.md (about 15 min on 2 cores).
bench: venv
	$(BIN)/python benchmarks/run_all.py $(if $(SKIP_CLUSTER),--skip-cluster)

clean: cluster-down
	rm -rf $(VENV) .tools runs .pytest_cache cluster/.build
