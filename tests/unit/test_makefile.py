"""The Makefile's interpreter check (`make python`, which `setup`, `run` and `test` go through):
the python3 on PATH if it is 3.11 or newer, else one error line naming what it found."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import ROOT

MAKE = shutil.which("make")

# A python3 that answers the Makefile's three questions as Python 3.10 would.
OLD_PYTHON = """#!/bin/sh
case "$*" in
  *sys.executable*) echo "$0" ;;
  *python_version*) echo 3.10.13 ;;
  *version_info*) exit 1 ;;
esac
"""


def _make_python(path: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MAKE, "--no-print-directory", "-s", "-C", str(ROOT), "python"],
        env={"PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_python3_on_path_is_used_when_it_is_new_enough():
    done = _make_python(f"{Path(sys.executable).parent}:/usr/bin:/bin")
    assert done.returncode == 0, done.stderr


def test_an_older_python3_is_one_error_line_naming_it(tmp_path):
    stub = tmp_path / "python3"
    stub.write_text(OLD_PYTHON)
    stub.chmod(0o755)
    done = _make_python(f"{tmp_path}:/usr/bin:/bin")
    assert done.returncode != 0
    assert done.stderr.splitlines()[0] == (
        f"error: python3 on PATH ({stub}) is Python 3.10.13; popseg needs 3.11 or newer"
    )


def test_no_python3_at_all_is_one_error_line(tmp_path):
    done = _make_python(str(tmp_path))
    assert done.returncode != 0
    assert done.stderr.splitlines()[0] == (
        "error: no python3 on PATH; popseg needs Python 3.11 or newer"
    )


def _dry_run(*targets: str) -> str:
    done = subprocess.run(
        [MAKE, "--no-print-directory", "-s", "-n", "-C", str(ROOT), *targets],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_bench_group_is_installed_by_make_bench_only():
    """scikit-learn-intelex (the `bench` group) is a benchmark anchor, not a dependency:
    the default sync (`make setup`/`run`/`test`, plain `uv sync`) leaves it out."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    bench = pyproject["dependency-groups"]["bench"]
    assert any(req.startswith("scikit-learn-intelex") for req in bench)
    assert "bench" not in pyproject["tool"]["uv"].get("default-groups", [])
    assert not any("intelex" in dep for dep in pyproject["project"]["dependencies"])
    default_setup = _dry_run("setup", "run", "test", "test-all")
    assert "sync --locked --all-extras" in default_setup
    assert "bench" not in default_setup and "--all-groups" not in default_setup
    for target in ("bench", "bench-quick"):
        commands = [line for line in _dry_run(target).splitlines() if " python -m " in line]
        assert commands and all("--group bench" in line for line in commands), commands


# A uv that records how it was called (arguments and the two variables that decide whether
# bytecode is written ahead of time or on first import) and does nothing else.
RECORDING_UV = """#!/bin/sh
echo "uv $* | compile=${UV_COMPILE_BYTECODE-unset} dontwrite=${PYTHONDONTWRITEBYTECODE-unset}" \\
    >> "$UV_CALLS"
"""


def test_setup_syncs_once_without_ahead_of_time_bytecode(tmp_path):
    """`make setup` is one `uv sync` and nothing in the background: uv compiles no bytecode
    ahead of time (Python compiles each module on its first import), and a
    PYTHONDONTWRITEBYTECODE set by the image is dropped so that those .pyc are kept."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "uv").write_text(RECORDING_UV)
    (fake / "uv").chmod(0o755)
    calls = tmp_path / "calls.txt"
    done = subprocess.run(
        [MAKE, "--no-print-directory", "-s", "-C", str(ROOT), "setup"],
        env={
            "PATH": f"{fake}:{Path(sys.executable).parent}:/usr/bin:/bin",
            "UV_CALLS": str(calls),
            "PYTHONDONTWRITEBYTECODE": "1",
            "UV_COMPILE_BYTECODE": "1",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert calls.read_text().splitlines() == [
        "uv sync --locked --all-extras | compile=0 dontwrite=unset"
    ]
