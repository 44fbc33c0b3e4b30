# Two commands do all the set-up on a machine with only Python 3.11 and pip:
#   make run    installs uv if missing, syncs the locked environment, runs the main job
#   make test   the same set-up, then the test suite (what .ci/run calls)
SHELL := /bin/bash
export UV_COMPILE_BYTECODE := 1
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := python3.11

# Evaluated at each use, so a uv installed by the `uv` target is found right away
# (`python3 -m uv` works even where pip's script directory is not on PATH).
UV = $(shell command -v uv >/dev/null 2>&1 && echo uv || echo python3 -m uv)

.PHONY: uv setup run test test-all lint format bench bench-quick ui clean

uv:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || \
		python3 -m pip install --quiet --disable-pip-version-check "uv>=0.5"

setup: uv
	$(UV) sync --locked

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

bench-quick: setup
	$(UV) run python -m benchmarks.run --quick
	$(UV) run python -m benchmarks.compile_time --quick
	$(UV) run python -m benchmarks.k_selection --quick

ui: setup
	$(UV) run popseg ui

clean:
	rm -rf .prefect mlflow.db mlartifacts gx data/raw .pytest_cache
