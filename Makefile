# Two commands do all the set-up on a machine with Python 3.11 or newer (python3) and pip:
#   make run    installs uv if missing, syncs the locked environment, runs the main job
#   make test   the same set-up, then the test suite (what .ci/run calls)
SHELL := /bin/bash
# No bytecode compilation at install: uv would compile every module of every package
# (~30 s of CPU on 2 cores); Python compiles what a command imports on first import and keeps
# the .pyc, which needs PYTHONDONTWRITEBYTECODE unset for make's commands (some images set it).
export UV_COMPILE_BYTECODE := 0
unexport PYTHONDONTWRITEBYTECODE
export UV_PYTHON_DOWNLOADS := never

# The python3 on PATH (its real executable, past pyenv-style shims); `python` checks it is
# 3.11 or newer, and uv builds the environment with it.
PYTHON3 := $(shell command -v python3 2>/dev/null)
PYTHON := $(shell python3 -c 'import sys; print(sys.executable)' 2>/dev/null)
PYTHON_VERSION := $(shell python3 -c 'import platform; print(platform.python_version())' 2>/dev/null)
export UV_PYTHON := $(PYTHON)

# Evaluated at each use, so a uv installed by the `uv` target is found right away
# (`python3 -m uv` works even where pip's script directory is not on PATH).
UV = $(shell command -v uv >/dev/null 2>&1 && echo uv || echo $(PYTHON) -m uv)

.PHONY: python uv setup run test test-all lint format bench-setup bench bench-quick ui clean

python:
	@[ -n "$(PYTHON)" ] || { echo "error: no python3 on PATH; popseg needs Python 3.11 or newer" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "error: python3 on PATH ($(PYTHON3)) is Python $(PYTHON_VERSION); popseg needs 3.11 or newer" >&2; exit 1; }

uv: python
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || \
		$(PYTHON) -m pip install --quiet --disable-pip-version-check "uv>=0.5"

# Every extra, so the tests exercise Dask, AWS, DVC and team mode too. numba compiles the
# pipeline's kernels on their first use (~10 s on a fresh clone, cached after); compiling
# them here in the background (`python -m tasks.compute.warm`) did not make a fresh
# `make setup && make run` faster on 2 cores (46.6 s with it, 42.5 s without; both compete
# for the CPU; benchmarks/fresh_clone.py).
setup: uv
	$(UV) sync --locked --all-extras

run: setup
	$(UV) run popseg run

test: setup
	$(UV) run pytest -m "not slow"

test-all: setup
	$(UV) run pytest

lint: setup
	$(UV) run ruff check .
	$(UV) run ruff format --check .

format: setup
	$(UV) run ruff format .
	$(UV) run ruff check --fix .

# The benchmarks also need the `bench` dependency group (scikit-learn-intelex, a second
# reference for the sweep); setup, run and test never install it.
bench-setup: uv
	$(UV) sync --locked --all-extras --group bench

BENCH = $(UV) run --locked --all-extras --group bench python -m

bench: bench-setup
	$(BENCH) benchmarks.run
	$(BENCH) benchmarks.compile_time
	$(BENCH) benchmarks.k_selection
	$(BENCH) benchmarks.gmm
	$(BENCH) benchmarks.pipeline
	$(BENCH) benchmarks.fresh_clone

bench-quick: bench-setup
	$(BENCH) benchmarks.run --quick
	$(BENCH) benchmarks.compile_time --quick
	$(BENCH) benchmarks.k_selection --quick
	$(BENCH) benchmarks.gmm --quick
	$(BENCH) benchmarks.pipeline --quick
	$(BENCH) benchmarks.fresh_clone --runs 1 --out fresh_clone-quick

ui: setup
	$(UV) run popseg ui

clean:
	rm -rf .prefect mlflow.db mlartifacts gx data/raw .pytest_cache
