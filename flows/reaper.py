"""Nothing popseg starts for its own use outlives it, whatever kills it (even SIGKILL).

`popseg` marks its environment with a token (``POPSEG_OWNER=<pid>.<start time>``) that every
process it starts inherits: the Prefect server (ephemeral or local), `mlflow ui` and its
workers, Dask workers, flow-run subprocesses, and their children. A tiny watchdog, started
first, waits on a pipe whose other end only popseg holds; when popseg goes (the kernel closes
the pipe however it died) the watchdog stops every process that still carries the token and
shares popseg's session. A process that detached into its own session on purpose (a local
endpoint from `popseg deploy`, tracked in .popseg/ and stopped by `popseg undeploy`) is left
alone.

The watchdog runs this file with ``python -I -S`` (standard library only, ~20 ms to start);
importing it changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

OWNER_VARIABLE = "POPSEG_OWNER"
TERM_GRACE_S = 5.0
# If the pipe's write end leaked into a forked child, the pipe never closes: also notice the
# parent going by the watchdog being re-parented.
PARENT_POLL_S = 1.0


def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[3])


def owner_token() -> str:
    """``<pid>.<start time>``: names this one process. Called in popseg itself, never in the
    isolated watchdog, which cannot import the project."""
    from tasks.run_liveness import process_start_ticks

    pid = os.getpid()
    return f"{pid}.{process_start_ticks(pid) or 0}"


def start_reaper() -> None:
    """Mark this process's environment and start its watchdog (once per process; Linux only,
    elsewhere a no-op)."""
    token = owner_token()
    if os.environ.get(OWNER_VARIABLE) == token or not Path("/proc/self/stat").exists():
        return
    os.environ[OWNER_VARIABLE] = token
    read_end, write_end = os.pipe()  # both ends non-inheritable; only read_end is passed
    watchdog = subprocess.Popen(
        [sys.executable, "-I", "-S", __file__, token, str(os.getpid())],
        stdin=read_end,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
        # Its own process group: a Ctrl-C or a signal sent to popseg's group does not end it
        # before it has cleaned up.
        process_group=0,
    )
    os.close(read_end)
    # The write end is kept open (never written) for this process's lifetime: its closing is
    # the signal. The Popen is kept so that it is not collected (and warned about) while the
    # watchdog runs.
    _HELD.append((write_end, watchdog))


_HELD: list[tuple[int, subprocess.Popen]] = []


def marked_processes(token: str, session: int, exclude: int) -> list[int]:
    """Processes of this session whose environment carries ``token``."""
    needle = f"{OWNER_VARIABLE}={token}".encode() + b"\0"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == exclude:
            continue
        pid = int(entry.name)
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if (b"\0" + environ).find(b"\0" + needle) < 0:
            continue
        if _session_of(pid) == session:
            found.append(pid)
    return found


def reap(token: str, session: int) -> None:
    """SIGTERM each marked process, then SIGKILL what is left after a grace period; twice, for
    processes started while the first ones were stopping."""
    me = os.getpid()
    for _ in range(2):
        targets = marked_processes(token, session, me)
        if not targets:
            return
        for pid in targets:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + TERM_GRACE_S
        while time.monotonic() < deadline and any(_alive(pid) for pid in targets):
            time.sleep(0.1)
        for pid in targets:
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _watch(token: str, parent: int) -> None:
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_IGN)
    session = os.getsid(0)
    while os.getppid() == parent:
        ready, _, _ = select.select([0], [], [], PARENT_POLL_S)
        if ready and not os.read(0, 1):
            break
    reap(token, session)


if __name__ == "__main__":
    _watch(sys.argv[1], int(sys.argv[2]))
