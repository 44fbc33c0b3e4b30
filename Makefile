# Two commands do all the set-up on a machine with Python 3.11 or newer (python3) and pip:
#   make run    installs uv if missing, syncs the locked environment, runs the main job
#   make test   the same set-up, then the test suite (what .ci/run calls)
SHELL := /bin/bash
export UV_COMPILE_BYTECODE := 1
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

.PHONY: python uv setup run test test-all lint format bench bench-quick ui clean

python:
	@[ -n "$(PYTHON)" ] || { echo "error: no python3 on PATH; popseg needs Python 3.11 or newer" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "error: python3 on PATH ($(PYTHON3)) is Python $(PYTHON_VERSION); popseg needs 3.11 or newer" >&2; exit 1; }

uv: python
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || \
		$(PYTHON) -m pip install --quiet --disable-pip-version-check "uv>=0.5"

# Every extra, so the tests exercise Dask, AWS, DVC and team mode too.
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

bench: setup
	$(UV) run python -m benchmarks.run
	$(UV) run python -m benchmarks.compile_time
	$(UV) run python -m benchmarks.k_selection
	$(UV) run python -m benchmarks.gmm
	$(UV) run python -m benchmarks.pipeline

bench-quick: setup
	$(UV) run python -m benchmarks.run --quick
	$(UV) run python -m benchmarks.compile_time --quick
	$(UV) run python -m benchmarks.k_selection --quick
	$(UV) run python -m benchmarks.gmm --quick
	$(UV) run python -m benchmarks.pipeline --quick

ui: setup
	$(UV) run popseg ui

clean:
	rm -rf .prefect mlflow.db mlartifacts gx data/raw .pytest_cache
