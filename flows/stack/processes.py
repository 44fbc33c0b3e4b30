"""The services the stack starts: each a detached process (its own session and process group,
so neither popseg's watchdog nor a terminal's Ctrl-C ends it) recorded with its pid and start
time in ``.popseg/stack/state.json``, so `status` and `down` work from any shell and `down`
never signals a process that merely reuses a recorded pid."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flows.reaper import OWNER_VARIABLE
from tasks.errors import StackError
from tasks.run_liveness import process_start_ticks

STACK_DIR = Path(".popseg") / "stack"
STATE_FILE = "state.json"
# After SIGKILL: until init has collected the killed processes.
KILL_WAIT_S = 5.0


@dataclass
class Service:
    """One started process: enough to find it again and to tell it from a pid reuse."""

    name: str
    pid: int
    start_ticks: str
    port: int | None
    log: str

    def running(self) -> bool:
        """The recorded process itself (same pid and start time) still runs."""
        return _alive(self.pid) and process_start_ticks(self.pid) == self.start_ticks

    def group_left(self) -> bool:
        """Processes of its group outlive a dead leader (server workers): still ours, since
        Linux hands out no pid equal to a live process group's id."""
        if _alive(self.pid):
            return False  # the leader's pid now names another process
        return _signal_group(self.pid, 0)


@dataclass
class StackState:
    project_dir: str
    services: dict[str, Service] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "project_dir": self.project_dir,
            "services": {name: asdict(s) for name, s in self.services.items()},
            "settings": self.settings,
        }


def stack_dir(project_dir: Path) -> Path:
    return project_dir / STACK_DIR


def load_state(project_dir: Path) -> StackState | None:
    path = stack_dir(project_dir) / STATE_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise StackError(f"{path}: unreadable stack state ({error})") from None
    services = {name: Service(**record) for name, record in raw.get("services", {}).items()}
    return StackState(raw["project_dir"], services, raw.get("settings", {}))


def save_state(state: StackState) -> None:
    folder = stack_dir(Path(state.project_dir))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STATE_FILE
    temporary = path.with_suffix(".tmp")
    # It holds the database password: readable by its owner only.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(state.to_json(), handle, indent=2)
    os.replace(temporary, path)


def free_port() -> int:
    from flows.prefect_server import _free_port

    return _free_port()


def port_busy(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def claim_port(name: str, wanted: int) -> int:
    """``wanted`` when it is free (0: any free port); a busy one is an error naming it."""
    if not wanted:
        return free_port()
    if port_busy(wanted):
        raise StackError(
            f"{name}: port {wanted} on 127.0.0.1 is already in use; free it or pick "
            "another port (0 = any free port)"
        )
    return wanted


def service_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """Our environment plus ``extra``, without popseg's watchdog mark: the services outlive
    the `popseg stack up` that starts them."""
    environment = {k: v for k, v in os.environ.items() if k != OWNER_VARIABLE}
    environment.update(extra)
    return environment


def spawn(
    name: str,
    command: Sequence[str],
    log: Path,
    port: int | None,
    environment: Mapping[str, str],
    cwd: Path,
) -> Service:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as output:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=dict(environment),
            cwd=cwd,
            start_new_session=True,
        )
    ticks = ""
    for _ in range(50):  # /proc/<pid>/stat appears as soon as the fork returns
        ticks = process_start_ticks(process.pid)
        if ticks:
            break
        time.sleep(0.01)
    return Service(name, process.pid, ticks, port, str(log))


def wait_ready(service: Service, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Until ``ready()``; the process exiting first, or the time running out, is an error
    pointing at its log, and what is left of the process is stopped."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if not service.running():
            stop(service)
            raise StackError(f"{service.name} exited while starting; see {service.log}")
        if time.monotonic() > deadline:
            stop(service)
            raise StackError(
                f"{service.name}: {what} not ready within {timeout_s:g} s; see {service.log}"
            )
        time.sleep(0.5)


def stop(service: Service, first_signal: int = signal.SIGTERM, grace_s: float = 20.0) -> bool:
    """Stop the service's process group if it is still the one recorded; returns whether
    anything of it was running."""
    if not (service.running() or service.group_left()):
        return False
    _signal_group(service.pid, first_signal)
    if not _group_ends(service.pid, grace_s):
        _signal_group(service.pid, signal.SIGKILL)
        _group_ends(service.pid, KILL_WAIT_S)
    return True


def _group_ends(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _signal_group(pgid, 0):
        _reap_child(pgid)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _reap_child(pid: int) -> None:
    # When the stack was brought up by this same process (tests), collect its zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _signal_group(pgid: int, signum: int) -> bool:
    from flows.runtime import _signal_group as signal_group

    return signal_group(pgid, signum)


def _alive(pid: int) -> bool:
    from flows.reaper import _alive as alive

    return alive(pid)
