"""MLflow runs are never left RUNNING by a process that is gone.

Each run popseg starts is tagged with the host, pid and process start time of the process
that owns it. An interrupted run (SIGINT, SIGTERM: the exception they raise unwinds through
`owned_run`) ends KILLED; a run whose process was killed outright (SIGKILL, power loss) is
found by `sweep_dead_runs`, which any command opening the tracking store runs once: RUNNING
runs owned by this host whose process is dead (or whose pid now names another process) are
marked FAILED with a tag saying why. Either way a model version registered by such a run is
deleted: a version exists only if its run finished.

`interrupts_held` keeps SIGTERM/SIGINT from raising inside MLflow's store writes: the writer
delivers them itself at checkpoints between its writes, where the run then ends KILLED.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

HOST_TAG = "popseg.host"
PID_TAG = "popseg.pid"
PID_START_TAG = "popseg.pid_start"
BOOT_TAG = "popseg.boot_id"
ENDED_BY_TAG = "popseg.ended_by"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot: with the pid, names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def owner_tags() -> dict[str, str]:
    pid = os.getpid()
    return {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(pid),
        PID_START_TAG: process_start_ticks(pid),
        BOOT_TAG: _boot_id(),
    }


def owner_alive(tags: dict[str, str]) -> bool:
    """Whether the process named by a run's owner tags (on this host) still runs."""
    if tags.get(BOOT_TAG) and tags[BOOT_TAG] != _boot_id():
        return False  # the machine rebooted since
    try:
        pid = int(tags[PID_TAG])
        os.kill(pid, 0)
    except (KeyError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        pass  # exists, another user's
    started = tags.get(PID_START_TAG)
    return not started or process_start_ticks(pid) == started


def discard_versions_of(client, run_id: str) -> list[str]:
    """Delete the model versions a run registered (it did not finish)."""
    removed = []
    for version in client.search_model_versions(f"run_id = '{run_id}'"):
        client.delete_model_version(version.name, version.version)
        removed.append(f"{version.name} v{version.version}")
    return removed


def _end(client, run_id: str, status: str, why: str) -> None:
    client.set_tag(run_id, ENDED_BY_TAG, why)
    client.set_terminated(run_id, status=status)
    removed = discard_versions_of(client, run_id)
    if removed:
        logger.warning("run %s %s: deleted its model version(s) %s", run_id, why, removed)


@contextlib.contextmanager
def owned_run(**start_run_kwargs) -> Iterator:
    """`mlflow.start_run` with the owner tags; ended FINISHED, FAILED on an error, KILLED on
    an interrupt (KeyboardInterrupt, SystemExit, Prefect's TerminationSignal on SIGTERM)."""
    import mlflow

    from tasks import tracking

    # Tagged as it is created: a kill cannot fall between the run and its owner.
    tags = {**(start_run_kwargs.pop("tags", None) or {}), **owner_tags()}
    with mlflow.start_run(**start_run_kwargs, tags=tags) as run:
        try:
            yield run
        except Exception:
            raise
        except BaseException as interrupt:
            why = f"interrupted in process {os.getpid()} ({type(interrupt).__name__})"
            client = tracking.client()
            active = mlflow.active_run()
            # Nested runs opened inside this one were ended by their own `owned_run`.
            if active is not None and active.info.run_id == run.info.run_id:
                mlflow.end_run("KILLED")
            _end(client, run.info.run_id, "KILLED", why)
            raise


_HELD_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def interrupts_held() -> Iterator[Callable[[], None]]:
    """Hold SIGTERM and SIGINT back; yields a checkpoint that delivers a held one (its handler
    raises there: Prefect's TerminationSignal, KeyboardInterrupt), as leaving does.

    Why: those handlers raise wherever the main thread is. Raised inside MLflow's store calls
    (an SQLAlchemy session mid-flush, a pool returning its connection), the exception either
    came out as an MlflowException (the run then ended FAILED, not KILLED) or left a sqlite
    write transaction open, so that every later write, ending the run included, failed with
    "database is locked" (the run stayed RUNNING). Between writes it is harmless. A second
    signal while one is held is delivered at once (someone insists). Only in the main thread
    (the only one Python signal handlers run in), and only for a signal whose handler is a
    Python function: under SIG_DFL the process ends outright, as before."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    previous: dict[int, Callable] = {}
    held: list[int] = []
    delivered = False

    def hold(signum, frame):
        held.append(signum)
        if len(held) > 1:
            deliver()

    def deliver():
        nonlocal delivered
        for signum, handler in previous.items():
            if signal.getsignal(signum) is hold:
                signal.signal(signum, handler)
        if held and not delivered:
            delivered = True
            previous[held[0]](held[0], None)

    def checkpoint():
        if held:
            deliver()

    for signum in _HELD_SIGNALS:
        handler = signal.getsignal(signum)
        if callable(handler):
            previous[signum] = handler
            signal.signal(signum, hold)
    try:
        yield checkpoint
    finally:
        deliver()


def sweep_dead_runs(client) -> list[str]:
    """Mark FAILED the RUNNING runs of this host whose owning process is gone (and their
    nested runs); one query when there are none. Returns the run ids marked."""
    host = socket.gethostname().replace("'", "")
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    if not experiment_ids:
        return []
    running = client.search_runs(
        experiment_ids,
        filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
    )
    dead = [run for run in running if not owner_alive(run.data.tags)]
    marked = []
    for run in dead:
        tags = run.data.tags
        why = f"process {tags.get(PID_TAG)} on {host} died while the run was RUNNING"
        children = client.search_runs(
            [run.info.experiment_id],
            filter_string=(
                f"attributes.status = 'RUNNING' and tags.`mlflow.parentRunId` = '{run.info.run_id}'"
            ),
        )
        for child in children:
            _end(client, child.info.run_id, "FAILED", why)
            marked.append(child.info.run_id)
        _end(client, run.info.run_id, "FAILED", why)
        marked.append(run.info.run_id)
        logger.warning("run %s marked FAILED: %s", run.info.run_id, why)
    return marked
