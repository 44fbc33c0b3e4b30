"""Process set-up for the CLI: where Prefect, GX and MLflow keep their state, and logging.

Called by the CLI before Prefect is imported (Prefect reads its settings at import time);
importing this module changes nothing.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

QUIET_LOGGERS = (
    "mlflow.tracking.request_header.registry",
    "alembic",
    "great_expectations",
    "httpx",
    "urllib3",
    "numba",
    "matplotlib",
    "mlflow.utils.environment",
    "mlflow.pyfunc",
    "py.warnings",
)


_PREFECT_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class _RunFormatter(logging.Formatter):
    """Prefixes Prefect's records with the task or flow run they belong to."""

    def format(self, record: logging.LogRecord) -> str:
        run = getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", None)
        message = super().format(record)
        return f"{message} [{run}]" if run else message


def configure_environment(project_dir: Path | None = None) -> None:
    """Defaults for a local, offline project; variables already set by the user win."""
    project = (project_dir or Path.cwd()).resolve()
    defaults = {
        "PREFECT_HOME": str(project / ".prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "tasks",
        "PREFECT_UI_ENABLED": "false",
        # The first start of the ephemeral server runs its database migrations (~20 s here).
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "GX_ANALYTICS_ENABLED": "false",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "GIT_PYTHON_REFRESH": "quiet",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


class _UserErrorFilter(logging.Filter):
    """A user error (bad file, bad key) is reported once by the CLI, without a traceback;
    Prefect's own failure log for it keeps the message and drops the stack."""

    def filter(self, record: logging.LogRecord) -> bool:
        from tasks.errors import PopsegError

        if record.exc_info and isinstance(record.exc_info[1], PopsegError):
            record.exc_info = None
            record.exc_text = None
        return True


class CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted, not when the handler was
    made: callers that swap stderr (test runners, --json redirection) keep getting logs.

    Public name on purpose: Prefect's logging set-up (run when Prefect is first imported,
    after this) keeps a root handler it takes for the user's, and replaces one whose class
    name starts with "_" (its own test handlers), which hid every INFO line of `tasks.*`."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """For a one-shot flow command: memory the process frees stays in its heap for its next
    arrays instead of going back to the kernel, and Arrow allocates from that heap too. By
    default glibc serves every large array (32 MB at most) from fresh pages and unmaps them
    when it is freed, and Arrow keeps a pool of its own, so each new array pays its page
    faults again: on this project's 2-core VM, 5 ms per MB. Measured on 500k x 20 in the warm
    runner: ingest + prepare 5.5 s -> 2.6 s, peak RSS 1026 -> 940 MB (what a parse frees,
    the arrays after it reuse). Not for long-lived servers, whose memory would stay at their
    peak. Returns False where it cannot apply (no glibc: macOS, musl)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if not (mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)):
        return False
    # Arrow's buffers (CSV and Parquet reads) from the same heap, not from its own pool's
    # fresh pages: what a parse frees, the arrays after it reuse. Set on the module, not
    # through ARROW_DEFAULT_MEMORY_POOL, which the servers a command starts would inherit
    # (pandas imports pyarrow anyway).
    import pyarrow

    pyarrow.set_memory_pool(pyarrow.system_memory_pool())
    return True


def configure_logging(verbose: bool = False) -> None:
    """Our logs to stderr (stdout stays clean for --json)."""
    handler = CurrentStderrHandler()
    handler.setFormatter(
        _RunFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    )
    if not verbose:
        handler.addFilter(_UserErrorFilter())
        # Prefect's own console handler prints run failures too: filter at its run loggers.
        for name in _PREFECT_RUN_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, _UserErrorFilter) for f in logger.filters):
                logger.addFilter(_UserErrorFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if not verbose else logging.INFO)


GROUP_STOP_GRACE_S = 10.0


def run_until_signalled(command: list[str]) -> int:
    """Run a server command (e.g. `mlflow ui`) until it exits or popseg gets SIGINT/SIGTERM;
    either way its whole process group (its workers too) is stopped before returning. The
    exit code is the command's, or 0 when a signal asked for the stop."""
    import signal
    import subprocess

    # Its own process group, so one signal reaches it and every worker it forks; the
    # terminal's Ctrl-C reaches popseg, which forwards it.
    process = subprocess.Popen(command, env=os.environ.copy(), process_group=0)
    stop_requested: list[int] = []

    def forward(signum, frame):
        stop_requested.append(signum)
        _signal_group(process.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = process.wait()
    finally:
        _stop_group(process.pid)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0 if stop_requested else code


def _signal_group(pgid: int, signum: int) -> bool:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _stop_group(pgid: int) -> None:
    """SIGTERM what is left of the group (workers outlive their leader), SIGKILL after a grace."""
    import signal
    import time

    if not _signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + GROUP_STOP_GRACE_S
    while time.monotonic() < deadline:
        if not _signal_group(pgid, 0):
            return
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)
