# Two entry points (see README): `make demo` and `make test`. Both set up
# .venv from scratch when it is missing (Python 3.11, CPU is fine).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test bench viz lock gpu-wheels

# Every package at the version and hash requirements.lock gives (torch 2.14.1 with
# torchvision 0.29.1: other pairs fail to import torchvision), then the project itself.
$(BIN)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# requirements.lock anew from pyproject.toml (after adding or changing a dependency).
lock:
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet pip-tools
	.lock-venv/bin/pip-compile --quiet --allow-unsafe --extra test --generate-hashes --strip-extras \
		-o requirements.lock pyproject.toml

setup: $(BIN)/.installed

demo: setup
	$(BIN)/kedro run --pipeline=sdft_aahq

# One pytest worker per core (two on CI), whole test files to each so module fixtures are built once.
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# RELEASED=PATH: a JiwanHur/SDFT checkout, timed against the project (issue 35); without it that part says it is skipped.
# The last line runs the demo twice, each in a fresh clone (about twice as long as `make demo`): under the FLOP
# counter for the GFLOP, then without it for the walls (the counter slows the training nodes): its floor ratio.
RELEASED ?=
bench: setup
	$(BIN)/python benchmarks/bench_steps.py
	$(BIN)/python benchmarks/bench_released.py $(if $(RELEASED),--released $(RELEASED))
	$(BIN)/python benchmarks/bench_text_to_image.py
	$(BIN)/python benchmarks/bench_cpu.py
	$(BIN)/python benchmarks/bench_ops.py
	$(BIN)/python benchmarks/bench_floor.py --fresh-clone --uncounted-walls

# The packages the GPU machine's image lacks, at their locked versions, as wheels for its Python 3.12
# (docs/BENCHMARK.md, "A GPU session": benchmarks/gpu_session.sh installs them there). The second line is
# what a Kedro run of the paper pipeline imports beyond that (benchmarks/paper_rehearsal.py).
GPU_WHEELS := diffusers pydantic pydantic-core annotated-types typing-inspection \
	kedro kedro-datasets omegaconf dynaconf more-itertools parse tomli-w appdirs clean-fid lpips open-clip-torch ftfy wcwidth torch-fidelity
gpu-wheels: setup
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--platform manylinux2014_x86_64 -d build/gpu_wheels \
		$(foreach p,$(GPU_WHEELS),$(shell grep -m1 -i '^$(p)==' requirements.lock | cut -d' ' -f1))

viz: setup
	$(BIN)/kedro viz build
