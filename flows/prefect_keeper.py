"""A kept, project-local Prefect API server that one-shot commands share.

Starting a Prefect server costs a one-shot command (`popseg run`, `train`, `monitor`) 7-13 s.
With ``POPSEG_PREFECT_SERVER=keep`` (the default) the first such command starts one detached
*keeper* process (its own session, without POPSEG_OWNER, so flows/reaper.py leaves it alone),
which runs the same API server `BackgroundServer` runs (no UI, no services) and records it in
``.popseg/prefect-kept.json`` (keeper pid + process start time, so a recycled pid is never
trusted; `popseg serve` records in its own file). Later commands reuse it. ``per-command``:
each command starts and stops its own server, as before.

Idle stop: each command holds a *lease* while it runs (a file named by its owner token under
``.popseg/prefect-kept/leases/``); the keeper stops the server and exits once no lease names a
live process and POPSEG_PREFECT_IDLE_MINUTES (default 30) have passed since the last one was
released. Every decision that starts, reuses or stops the server is taken under one file lock,
so two commands started together start one server.

Crash hygiene: flow runs are tagged ``popseg.owner:<pid>.<start time>``; the keeper marks
RUNNING runs whose owner process is gone (SIGKILL) as Crashed.

Standard library only (plus tasks.run_liveness): the keeper must start fast and commands use
this before Prefect is imported.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from flows.prefect_server import _free_port, _healthy, api_server_command, api_server_environment
from tasks.errors import ConfigError, PopsegError
from tasks.run_liveness import process_start_ticks

MODE_VARIABLE = "POPSEG_PREFECT_SERVER"
MODES = ("keep", "per-command")
IDLE_VARIABLE = "POPSEG_PREFECT_IDLE_MINUTES"
DEFAULT_IDLE_MINUTES = 30.0
OWNER_TAG_PREFIX = "popseg.owner:"
STARTUP_TIMEOUT_S = 180.0
_STOP_GRACE_S = 10.0

RECORD_NAME = "prefect-kept.json"
LOCK_NAME = "prefect-kept.lock"
LEASES_NAME = "prefect-kept/leases"
USED_NAME = "prefect-kept/last-used"


class KeptServerError(PopsegError):
    """The kept Prefect server did not start."""


def server_mode() -> str:
    """POPSEG_PREFECT_SERVER: keep (default) or per-command; anything else is a config error."""
    value = os.environ.get(MODE_VARIABLE, "keep").strip() or "keep"
    if value not in MODES:
        raise ConfigError(f"{MODE_VARIABLE}={value!r}: choose one of {', '.join(MODES)}")
    return value


def idle_minutes() -> float:
    raw = os.environ.get(IDLE_VARIABLE, "")
    if not raw.strip():
        return DEFAULT_IDLE_MINUTES
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{IDLE_VARIABLE}={raw!r}: a positive number of minutes (e.g. 30)")
    return value


# ------------------------------------------------------------------------------ the files


def _state_dir(project: Path | None = None) -> Path:
    return (project or Path.cwd()).resolve() / ".popseg"


@contextlib.contextmanager
def _locked(project: Path | None = None) -> Iterator[None]:
    state = _state_dir(project)
    state.mkdir(parents=True, exist_ok=True)
    with open(state / LOCK_NAME, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid: int, ticks: str) -> bool:
    """The process ``pid`` runs and is the one that started at ``ticks`` (not a recycled pid)."""
    now = process_start_ticks(pid)
    if not now:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and (not ticks or ticks == "0" or now == ticks)


def _token_alive(token: str) -> bool:
    pid, _, ticks = token.partition(".")
    return pid.isdigit() and _alive(int(pid), ticks)


def read_record(project: Path | None = None) -> dict | None:
    """The kept server's record when its keeper still runs (same pid and start time)."""
    try:
        record = json.loads((_state_dir(project) / RECORD_NAME).read_text())
        pid, ticks, api_url = int(record["pid"]), str(record["start"]), str(record["api_url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if api_url and _alive(pid, ticks) else None


def running_api_url(project: Path | None = None) -> str | None:
    """The kept server's API when its keeper runs and it answers."""
    record = read_record(project)
    return record["api_url"] if record and _healthy(record["api_url"]) else None


# ------------------------------------------------------------------------ the command's side


_LEASES: list[Path] = []


def acquire(owner: str) -> str:
    """The kept server's API URL for this command, started now (in the background) if none
    runs; a lease named by ``owner`` keeps it from stopping until `release`. The server may
    still be starting: `wait_ready` waits for it."""
    state = _state_dir()
    with _locked():
        record = read_record()
        if record is None:
            record = _start_keeper(state.parent)
        lease = state / LEASES_NAME / owner
        lease.parent.mkdir(parents=True, exist_ok=True)
        lease.write_text(str(os.getpid()))
    _LEASES.append(lease)
    return record["api_url"]


def release() -> None:
    """Drop this process's lease (at exit): the idle clock starts now."""
    while _LEASES:
        lease = _LEASES.pop()
        with contextlib.suppress(OSError):
            used = lease.parents[1] / "last-used"
            used.touch()
            lease.unlink()


def wait_ready(api_url: str, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Block until the kept server answers /health; an error when its keeper is gone."""
    deadline = time.monotonic() + timeout_s
    while not _healthy(api_url):
        if read_record() is None:
            raise KeptServerError(
                f"the kept Prefect server for {api_url} stopped while starting; see "
                f"{_log_path(Path.cwd())} (or set {MODE_VARIABLE}=per-command)"
            )
        if time.monotonic() > deadline:
            raise KeptServerError(
                f"the kept Prefect server did not answer on {api_url} within {timeout_s:g} s; "
                f"see {_log_path(Path.cwd())}"
            )
        time.sleep(0.05)


def _log_path(project: Path) -> Path:
    home = Path(os.environ.get("PREFECT_HOME", project / ".prefect"))
    return home / "kept-server.log"


def _start_keeper(project: Path) -> dict:
    """Start the keeper (detached: own session, no owner token) and record it. Under the lock."""
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    environment = {k: v for k, v in os.environ.items() if k != "POPSEG_OWNER"}
    environment.pop("PREFECT_API_URL", None)
    environment["PREFECT_HOME"] = str(Path(environment.get("PREFECT_HOME", ".prefect")).resolve())
    log_path = _log_path(project)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    minutes = idle_minutes()
    with open(log_path, "ab") as log:
        keeper = subprocess.Popen(
            [sys.executable, "-m", "flows.prefect_keeper", str(project), str(port), str(minutes)],
            env=environment,
            cwd=project,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    record = {
        "api_url": api_url,
        "pid": keeper.pid,
        "start": process_start_ticks(keeper.pid),
        "idle_minutes": minutes,
        "started_at": time.time(),
    }
    path = _state_dir(project) / RECORD_NAME
    path.write_text(json.dumps(record))
    # Not waited for here: it outlives this command on purpose.
    keeper.returncode = 0
    return record


def status(project: Path | None = None) -> dict:
    """What `popseg prefect status` shows: running?, url, pid, leases, idle minutes left."""
    record = read_record(project)
    if record is None:
        return {"running": False, "mode": os.environ.get(MODE_VARIABLE, "keep")}
    leases = _live_leases(_state_dir(project) / LEASES_NAME)
    left = None
    if not leases:
        last = max(_last_used(_state_dir(project)), float(record.get("started_at", 0)))
        left = max(0.0, float(record["idle_minutes"]) - (time.time() - last) / 60)
    return {
        "running": True,
        "healthy": _healthy(record["api_url"]),
        "api_url": record["api_url"],
        "pid": record["pid"],
        "commands_using": len(leases),
        "idle_minutes": record["idle_minutes"],
        "idle_minutes_left": None if left is None else round(left, 2),
    }


def stop(project: Path | None = None, timeout_s: float = 30) -> bool:
    """Stop the kept server (SIGTERM to its keeper, which stops the server); False if none."""
    with _locked(project):
        record = read_record(project)
        if record is None:
            return False
        pid, ticks = int(record["pid"]), str(record["start"])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    wait_or_kill(pid, ticks, timeout_s)
    with contextlib.suppress(OSError):
        (_state_dir(project) / RECORD_NAME).unlink()
    return True


def wait_or_kill(pid: int, ticks: str, timeout_s: float) -> None:
    """Wait for a detached process told to stop (the keeper, the warm runner: each leads its
    own session and process group) to exit; SIGKILL its group after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while _alive(pid, ticks) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid, ticks):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


# ------------------------------------------------------------------------------ the keeper


def _live_leases(leases: Path) -> list[str]:
    """Owner tokens holding a lease whose process still runs; dead ones (SIGKILL) are removed."""
    live = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(leases):
            if _token_alive(entry.name):
                live.append(entry.name)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
    return live


def _last_used(state: Path) -> float:
    try:
        return (state / USED_NAME).stat().st_mtime
    except OSError:
        return 0.0


def _api(api_url: str, path: str, body: dict) -> object:
    request = urllib.request.Request(
        api_url.rstrip("/") + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        text = answer.read()
    return json.loads(text) if text else None


def mark_crashed_runs(api_url: str) -> list[str]:
    """Mark RUNNING flow runs whose owner process (tag ``popseg.owner:<pid>.<start>``) is gone
    as Crashed; their ids."""
    running = _api(
        api_url,
        "/flow_runs/filter",
        {"flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}}, "limit": 200},
    )
    crashed = []
    for run in running or []:
        owners = [
            t[len(OWNER_TAG_PREFIX) :]
            for t in run.get("tags") or []
            if t.startswith(OWNER_TAG_PREFIX)
        ]
        if not owners or any(_token_alive(token) for token in owners):
            continue
        state = {
            "type": "CRASHED",
            "name": "Crashed",
            "message": f"popseg process {owners[0]} is gone (killed); marked by the kept server",
        }
        _api(api_url, f"/flow_runs/{run['id']}/set_state", {"state": state, "force": True})
        crashed.append(run["id"])
    return crashed


def keep(project: Path, port: int, minutes: float) -> None:
    """The keeper's loop: run the server, sweep crashed runs, stop when idle or told to."""
    state = _state_dir(project)
    me = {"pid": os.getpid(), "start": process_start_ticks(os.getpid())}
    # The same server `BackgroundServer` runs: API only, no UI, no background services.
    server = subprocess.Popen(
        api_server_command(port), env=api_server_environment(), stdin=subprocess.DEVNULL
    )
    api_url = f"http://127.0.0.1:{port}/api"
    stopping: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda s, _f: stopping.append(s))
    idle_s = minutes * 60
    poll_s = min(5.0, max(0.2, idle_s / 20))
    last = time.time()
    try:
        while not stopping and server.poll() is None:
            time.sleep(poll_s)
            if _healthy(api_url):
                with contextlib.suppress(OSError, ValueError):
                    mark_crashed_runs(api_url)
            with _locked(project):
                if _live_leases(state / LEASES_NAME):
                    last = time.time()
                    continue
                last = max(last, _last_used(state))
                if time.time() - last >= idle_s:
                    print(f"idle for {minutes:g} min: stopping the kept Prefect server", flush=True)
                    _forget(state, me)
                    break
    finally:
        with _locked(project):
            _forget(state, me)
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _forget(state: Path, me: dict) -> None:
    """Remove the record if it is this keeper's."""
    with contextlib.suppress(OSError, ValueError):
        record = json.loads((state / RECORD_NAME).read_text())
        if record.get("pid") == me["pid"] and str(record.get("start")) == me["start"]:
            (state / RECORD_NAME).unlink()


if __name__ == "__main__":
    keep(Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
