"""Progress of `popseg train`: Rich bars when stderr is a terminal, plain lines when it is
not, and stdout the JSON document alone either way. In this process (a stream that says it
is a terminal), and as a real process on a pseudo-terminal and on a pipe (`slow`)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ANSI = "\x1b["
# The steps a KNN-imputed training reports (tasks/progress.py descriptions).
STEPS = ("KNN imputation", "k-means k=2..", "scoring k", "bootstrap refits")


@pytest.fixture
def gappy_csv(project_dir) -> Path:
    """60 rows in two groups, one value in six missing (so KNN imputation has work)."""
    rng = np.random.default_rng(5)
    values = np.vstack([rng.normal(0, 1, size=(30, 3)), rng.normal(6, 1, size=(30, 3))])
    values[::6, 1] = np.nan
    frame = pd.DataFrame(values, columns=["alpha", "beta", "gamma"])
    frame.insert(0, "name", [f"row-{i}" for i in range(60)])
    path = project_dir / "gappy.csv"
    frame.to_csv(path, index=False)
    return path


def _arguments(data: Path) -> list[str]:
    # no cached results: the second run reports its steps too
    settings = ("impute.strategy=knn", "cluster.k_max=6", "orchestrate.cache=false")
    return [
        "train",
        "--data",
        str(data),
        "--no-promote",
        "--json",
        *(f"--set={s}" for s in settings),
    ]


def _command(data: Path) -> list[str]:
    return [str(Path(sys.executable).with_name("popseg")), *_arguments(data)]


class TerminalBuffer(StringIO):
    def isatty(self) -> bool:
        return True


def _train_here(data: Path, stderr: StringIO) -> tuple[int, str]:
    """`popseg train` in this process with ``stderr`` as its stderr: exit code, stdout."""
    from flows.cli import app

    stdout = StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        code = app(_arguments(data), standalone_mode=False)
    return code or 0, stdout.getvalue()


def _check_bars(code: int, stdout: str, terminal: str, version: str) -> None:
    assert code == 0, terminal[-3000:]
    assert json.loads(stdout)["model_version"] == version  # stdout: the document alone
    assert ANSI not in stdout and "━" not in stdout
    for step in STEPS:
        assert step in terminal, step
    assert "━" in terminal and ANSI in terminal  # drawn bars, redrawn in place
    assert "tasks.progress" not in terminal  # bars instead of the plain lines


def _check_lines(code: int, stdout: str, stderr: str, version: str) -> None:
    assert code == 0, stderr[-3000:]
    assert json.loads(stdout)["model_version"] == version
    # popseg's log format, or Prefect's where its logging set-up replaced popseg's
    progress = [line for line in stderr.splitlines() if "tasks.progress" in line]
    for step in STEPS:
        assert any(step in line for line in progress), step
    assert any("KNN imputation (60 donor rows): 10/10 rows" in line for line in progress)
    assert any(": 20/20 refits" in line for line in progress)
    # a log, not a display: no cursor control, no carriage-return redraws, no bar glyphs
    # (MLflow colours its own warnings: only the progress lines are checked for escapes)
    assert not any(ANSI in line for line in progress)
    assert "\r" not in stderr and "━" not in stderr


def test_bars_on_a_terminal_lines_otherwise_json_alone_on_stdout(
    prefect_server, project_dir, gappy_csv
):
    terminal = TerminalBuffer()
    code, stdout = _train_here(gappy_csv, terminal)
    _check_bars(code, stdout, terminal.getvalue(), "1")
    log = StringIO()
    code, stdout = _train_here(gappy_csv, log)
    _check_lines(code, stdout, log.getvalue(), "2")


def _env(project_dir: Path) -> dict[str, str]:
    """The session's Prefect test server (no ephemeral server to start), the project's
    store, an xterm; none of the variables that force Rich's colour or interactivity."""
    from prefect.settings import PREFECT_API_URL

    forced = ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API") and k not in forced
    }
    env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project_dir / 'mlflow.db'}"
    env["TERM"] = "xterm-256color"
    return env


def _run_on_a_terminal(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """``command`` with stderr on a pseudo-terminal (120 x 40) and stdout on a pipe: its exit
    code, stdout, and what the terminal received."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave
    )
    os.close(slave)
    received = bytearray()
    stdout = bytearray()
    deadline = time.monotonic() + 240
    try:
        # Drain both: a full terminal buffer would block the child.
        streams = [master, process.stdout.fileno()]
        while streams and time.monotonic() < deadline:
            ready, _, _ = select.select(streams, [], [], 1.0)
            for fd in ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the terminal's other side closed
                    chunk = b""
                if not chunk:
                    streams.remove(fd)
                elif fd == master:
                    received += chunk
                else:
                    stdout += chunk
            if process.poll() is not None and process.stdout.fileno() not in streams:
                break
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        os.close(master)
    return code, stdout.decode(), received.decode(errors="replace")


@pytest.mark.slow
def test_a_real_process_on_a_pseudo_terminal_and_on_a_pipe(prefect_server, project_dir, gappy_csv):
    env = _env(project_dir)
    code, stdout, terminal = _run_on_a_terminal(_command(gappy_csv), project_dir, env)
    _check_bars(code, stdout, terminal, "1")
    piped = subprocess.run(
        _command(gappy_csv), cwd=project_dir, env=env, capture_output=True, text=True, timeout=240
    )
    _check_lines(piped.returncode, piped.stdout, piped.stderr, "2")
