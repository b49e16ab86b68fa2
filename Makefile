# contrastlab — every target sets itself up on a fresh machine (virtual environment, pinned install, export).
SHELL := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PRESET ?= ci
export NUMBA_CACHE_DIR := $(CURDIR)/.cache/numba
export MPLCONFIGDIR    := $(CURDIR)/.cache/matplotlib
export HF_HUB_OFFLINE  := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup export run test unit nbtest lab docs readme bench gpu-bundle gpu-test clean browser peers

# --- set-up -------------------------------------------------------------------------------------------
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q torch==2.13.0          # the CPU build first, so nothing pulls a CUDA build
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	mkdir -p $(VENV)/share/jupyter/lab/settings
	echo '{"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}}' \
	  > $(VENV)/share/jupyter/lab/settings/overrides.json
	touch $(STAMP)

setup: $(STAMP)

export: setup
	$(BIN)/nbdev-export

# Chromium (Debian) for the headless browser check of the docs site; Playwright drives it, no browser download.
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# --- the two commands ---------------------------------------------------------------------------------
run: export
	@stamp=$$(date +%Y%m%d-%H%M%S); out=runs/$$stamp; \
	$(BIN)/contrastlab run --preset $(PRESET) --out $$out; rc=$$?; \
	$(BIN)/python tools/build_docs.py $$out > $$out/docs.log 2>&1 || { cat $$out/docs.log; rc=1; }; \
	echo "run folder: $$out   docs: _docs/index.html (log: $$out/docs.log)   ledger: ledger/ (written by PRESET=full)"; exit $$rc

# Peers (lightly, pytorch-metric-learning) are parity oracles of the tests and the benchmark: --no-deps, never main requirements.
peers: setup
	$(BIN)/pip install -q --no-deps -r bench/requirements.txt

test: export browser peers
	$(BIN)/python -m pytest tests -v -p no:cacheprovider --durations=25

# --- the rest -----------------------------------------------------------------------------------------
unit: export peers
	$(BIN)/python -m pytest tests -v -m "not notebooks"

lab: export
	CONTRASTLAB_PLAIN= $(BIN)/jupyter lab --notebook-dir nbs

docs: export
	$(BIN)/contrastlab run --preset ci --out _build/docs_run; $(BIN)/python tools/build_docs.py _build/docs_run

readme: export
	$(BIN)/contrastlab run nbs/index.ipynb --out _build/readme >/dev/null
	$(BIN)/python tools/readme.py _build/readme/index.ipynb

# Peers are bench-only: installed --no-deps (lightly would pull torchvision and a CUDA torch), pinned in bench/requirements.txt.
bench: export peers
	$(BIN)/python bench/bench_losses.py
	@if [ -f bench/bench_ot.py ]; then $(BIN)/python bench/bench_ot.py; fi
	@for b in bench/bench_swav.py bench/bench_mochi.py bench/bench_dse.py; do if [ -f $$b ]; then $(BIN)/python $$b || exit 1; fi; done
	$(BIN)/python bench/bench_explorers.py
	$(BIN)/python tools/device_audit.py --json bench/results/device_audit.json

# The GPU path (README, "GPU tests"): on a CPU machine with a registry, `make gpu-bundle` writes _build/gpu-bundle (the
# wheels an accelerator machine without a registry lacks, for its Python 3.12); there, `make gpu-test` (or
# `bash tools/gpu_test.sh` where make is missing) uses the machine's CUDA PyTorch and the bundle, nothing else.
PYTHON_VERSION ?= 3.12
gpu-bundle: export
	$(BIN)/python tools/gpu_bundle.py --python-version $(PYTHON_VERSION)

gpu-test:
	bash tools/gpu_test.sh

clean:
	rm -rf _proc _build _docs runs results .pytest_cache
