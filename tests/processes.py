"""Child processes that tests start several of at once (to race each other) and whose
output they read when all have finished."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


def start(
    command: Sequence[str], cwd: str | Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    """``command`` running in ``cwd``, its stdout and stderr piped as text."""
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def outputs(
    processes: Sequence[subprocess.Popen[str]], timeout: float, tail: int = 2000
) -> list[str]:
    """The stdout of each process once it has exited; fails the test (with the last ``tail``
    characters of its stderr) unless every one exited 0."""
    results = [process.communicate(timeout=timeout) for process in processes]
    for process, (_, err) in zip(processes, results, strict=True):
        assert process.returncode == 0, err[-tail:]
    return [out for out, _ in results]


def free_port() -> int:
    """A port on 127.0.0.1 free right now (servers under test never take fixed ports)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_answers(url: str, process: subprocess.Popen, timeout_s: float) -> bool:
    """Polls ``url`` until it answers (any HTTP status); False if ``process`` exits first or
    ``timeout_s`` passes."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return True
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                return False
            time.sleep(0.2)
