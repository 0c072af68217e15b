# Two entry points (see README): `make demo` and `make test`. Both set up
# .venv from scratch when it is missing (Python 3.11, CPU is fine).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test bench viz

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch and torchvision first, pinned together (other pairs fail to import torchvision).
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/kedro run --pipeline=sdft_aahq

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/bench_steps.py

viz: setup
	$(BIN)/kedro viz build
