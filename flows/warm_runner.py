"""A warm process that runs popseg's flow commands without paying their imports again.

A warm `popseg train` on a small file spent about 10 of its 15 s importing Prefect, Great
Expectations, MLflow, matplotlib and scikit-learn. With ``POPSEG_WARM_RUNNER=on`` (the
default), a flow command (`popseg train`, `run`, `monitor`) that ran the ordinary way starts,
as it exits, a detached *runner* for its project: its own session, without popseg's owner
token (flows/reaper.py leaves it alone), log in ``.popseg/warm-runner.log``. The runner
imports those modules once, listens on a Unix socket and records itself in
``.popseg/warm-runner.json`` (pid, process start time, socket, fingerprint). The next flow
command in that project hands its arguments, environment and standard streams to the runner,
which forks: the child is a fresh popseg process in every way that matters (its own pid,
session, owner token and reaper, the caller's environment, working directory, terminal and
exit code), only without the imports. Nothing about the work changes: the same CLI code runs.

When it is not used (the command then runs in its own process, as before): ``off``; a command
other than train/run/monitor, or ``--help``; no runner yet or one still importing; a runner
whose *fingerprint* differs (the Python, the installed packages, popseg's source files, or an
environment variable read at import: NUMBA_*, PREFECT_*, MLFLOW_*, GX_*, thread-pool and
Python variables); it is stopped and the command starts a fresh one as it exits. A runner
stops after POPSEG_WARM_IDLE_MINUTES (default 30) with no command, on SIGTERM or
`popseg runner stop`; commands it is running go on.

Signals and failures: the caller forwards SIGINT, SIGTERM and SIGHUP to the child; a caller
killed outright (SIGKILL) closes the socket, and the child then gets SIGTERM, as a popseg
command would (its runs end KILLED, nothing half-registered). A child killed by a signal is
reported to the caller (exit 128 + the signal).

Protocol, one command per connection (peer checked to be this user): the caller sends a
4-byte big-endian length and that many bytes of JSON ``{"argv": [...], "cwd": "...",
"env": {...}}`` with its stdin, stdout and stderr as SCM_RIGHTS descriptors on the first
bytes. The runner forks at accept, so a slow or idle caller ties up only its own child,
which reads the request within ``REQUEST_TIMEOUT_S`` (at most ``MAX_REQUEST_BYTES``). Replies,
framed the same way: ``{"pid": n}`` once the child runs the command, then ``{"exit": code}``;
``{"signal": n}`` from the runner for a child killed by a signal; ``{"error": "..."}`` for a
request refused before anything ran; ``{"busy": true}`` beyond ``MAX_CHILDREN`` at once.

Importing this module changes nothing; the client side uses the standard library only.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

MODE_VARIABLE = "POPSEG_WARM_RUNNER"
MODES = ("on", "off")
IDLE_VARIABLE = "POPSEG_WARM_IDLE_MINUTES"
DEFAULT_IDLE_MINUTES = 30.0
WARM_COMMANDS = frozenset({"train", "run", "monitor"})

RECORD_NAME = "warm-runner.json"
LOCK_NAME = "warm-runner.lock"
LOG_NAME = "warm-runner.log"
SOCKET_NAME = "warm-runner.sock"

MAX_REQUEST_BYTES = 1 << 20
MAX_REPLY_BYTES = 1 << 16
REQUEST_TIMEOUT_S = 5.0
MAX_CHILDREN = 8
STOP_GRACE_S = 10.0
# The runner's imports, at most (about 7-10 s here).
STARTUP_TIMEOUT_S = 120.0
# Exit statuses of a child that ran no command: a refused request, a crash in the runner's
# own code (popseg's commands exit 0-7, or by a signal).
_REQUEST_REFUSED = 98
_CHILD_INTERNAL_ERROR = 99

# Read when their modules are imported (numba's threads and cache, Prefect's logging set-up,
# thread pools, the interpreter): a runner imported under other values cannot serve.
_FINGERPRINT_PREFIXES = (
    "NUMBA_",
    "PREFECT_",
    "MLFLOW_",
    "GX_",
    "OMP_",
    "MKL_",
    "OPENBLAS_",
    "KMP_",
    "PYTHON",
    "POPSEG_",
    "SCIPY_",
    "MPL",
    "LD_",
)
# Set per command (flows/prefect_server.py points Prefect at its API and refreshes its
# settings), or the runner's own switches.
_FINGERPRINT_IGNORED = frozenset(
    {"PREFECT_API_URL", "PREFECT_UI_URL", "POPSEG_OWNER", MODE_VARIABLE, IDLE_VARIABLE}
)

# What a flow command imports before and during its work (measured: ~9 s of a warm train).
PRELOADED_MODULES = (
    "flows.cli.app",
    "flows.training",
    "flows.monitoring",
    "great_expectations",
    "great_expectations.data_context",
    "mlflow",
    "mlflow.pyfunc",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
)


class RunnerRequestError(ValueError):
    """A request the runner refuses (framing, size, fields, descriptors)."""


# ------------------------------------------------------------------------------ settings


def mode() -> str:
    """POPSEG_WARM_RUNNER: on (default) or off; anything else raises ValueError."""
    value = os.environ.get(MODE_VARIABLE, "on").strip().lower() or "on"
    if value not in MODES:
        raise ValueError(
            f"{MODE_VARIABLE}={os.environ[MODE_VARIABLE]!r}: choose one of {', '.join(MODES)}"
        )
    return value


def idle_minutes() -> float:
    raw = os.environ.get(IDLE_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_IDLE_MINUTES
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{IDLE_VARIABLE}={raw!r}: a positive number of minutes (e.g. 30)")
    return value


def warm_command(argv: list[str]) -> str | None:
    """The flow command ``argv`` names when the runner may run it, else None."""
    if any(arg in ("--help", "--version") for arg in argv):
        return None
    for arg in argv:
        if arg in ("-v", "--verbose"):
            continue
        return arg if arg in WARM_COMMANDS else None
    return None


def fingerprint(environment: dict[str, str] | None = None) -> str:
    """What a runner's imports depend on: the interpreter, the installed packages (their
    folders' modification times), popseg's source files and the import-time variables."""
    environment = os.environ if environment is None else environment
    parts: list[object] = [sys.executable, sys.version, sys.flags.optimize]
    for key in sorted(environment):
        if key.startswith(_FINGERPRINT_PREFIXES) and key not in _FINGERPRINT_IGNORED:
            parts.append((key, environment[key]))
    for name in sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}):
        with contextlib.suppress(OSError):
            parts.append((name, os.stat(name).st_mtime_ns))
    for package in _source_roots():
        count = newest = size = 0
        for folder, _dirs, files in os.walk(package):
            for name in files:
                if name.endswith(".py"):
                    with contextlib.suppress(OSError):
                        stat = os.stat(os.path.join(folder, name))
                        count, size = count + 1, size + stat.st_size
                        newest = max(newest, stat.st_mtime_ns)
        parts.append((str(package), count, size, newest))
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:32]


def _source_roots() -> list[Path]:
    here = Path(__file__).resolve().parent  # flows/
    return [here, here.parent / "tasks"]


# ------------------------------------------------------------------------------ the files


def _state_dir(project: Path | None = None) -> Path:
    return (project or Path.cwd()).resolve() / ".popseg"


def _socket_path(project: Path) -> Path:
    """In the project's state folder; under /tmp/popseg-<uid>/ (0700) when that path is too
    long for a Unix socket (108 bytes)."""
    local = _state_dir(project) / SOCKET_NAME
    if len(os.fsencode(local)) < 100:
        return local
    private = Path("/tmp") / f"popseg-{os.getuid()}"
    private.mkdir(mode=0o700, exist_ok=True)
    info = private.lstat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077 or not private.is_dir():
        raise OSError(f"{private} is not a private folder of this user")
    digest = hashlib.sha256(os.fsencode(project.resolve())).hexdigest()[:16]
    return private / f"warm-{digest}.sock"


def read_record(project: Path | None = None) -> dict | None:
    """The runner's record when its process still runs (same pid and start time)."""
    try:
        record = json.loads((_state_dir(project) / RECORD_NAME).read_text())
        pid, ticks = int(record["pid"]), str(record["start"])
        str(record["socket"]), str(record["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    from flows.prefect_keeper import _alive

    return record if _alive(pid, ticks) else None


def status(project: Path | None = None) -> dict:
    """What `popseg runner status` shows."""
    record = read_record(project)
    if record is None:
        return {"running": False, "mode": os.environ.get(MODE_VARIABLE, "on")}
    current = fingerprint()
    return {
        "running": True,
        "pid": record["pid"],
        "socket": record["socket"],
        "current": record["fingerprint"] == current,
        "idle_minutes": record["idle_minutes"],
        "started_at": record["started_at"],
    }


def stop(project: Path | None = None, timeout_s: float = STOP_GRACE_S) -> bool:
    """SIGTERM the runner (commands it runs go on), one still importing too, once it
    listens; False when none runs or starts."""
    record = read_record(project) or _starting_runner(project)
    if record is None:
        return False
    from flows.prefect_keeper import wait_or_kill

    pid, ticks = int(record["pid"]), str(record["start"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    wait_or_kill(pid, ticks, timeout_s)  # the runner leads its own session and group
    _forget(_state_dir(project), {"pid": pid, "start": ticks})
    return True


def _starting_runner(project: Path | None, timeout_s: float = STARTUP_TIMEOUT_S) -> dict | None:
    """The record of a runner that holds the lock but has not recorded itself yet (it is
    importing: a command started it as it exited), once it has; None if none starts."""
    lock_path = _state_dir(project) / LOCK_NAME
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not lock_path.exists():
            return None
        lock = _try_lock(lock_path)
        if lock is not None:  # nobody holds it: no runner starts
            os.close(lock)
            return read_record(project)
        record = read_record(project)
        if record is not None:
            return record
        time.sleep(0.1)
    return None


def _forget(state: Path, me: dict) -> None:
    """Remove the record (and its socket) if it is this runner's."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        record = json.loads((state / RECORD_NAME).read_text())
        if record.get("pid") == me["pid"] and str(record.get("start")) == str(me["start"]):
            (state / RECORD_NAME).unlink()
            with contextlib.suppress(OSError):
                os.unlink(record["socket"])


# ------------------------------------------------------------------------------ framing


def _send(sock: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    body = json.dumps(message).encode()
    frame = struct.pack(">I", len(body)) + body
    if fds:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        sent = sock.sendmsg([frame], ancillary)
        frame = frame[sent:]
    if frame:
        sock.sendall(frame)


def _recv_exact(sock: socket.socket, size: int, deadline: float | None) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RunnerRequestError(f"no complete request within {REQUEST_TIMEOUT_S:g} s")
            sock.settimeout(left)
        try:
            chunk = sock.recv(min(size - len(chunks), 1 << 16))
        except TimeoutError as exc:
            raise RunnerRequestError(f"no complete request within {REQUEST_TIMEOUT_S:g} s") from exc
        if not chunk:
            raise EOFError("the connection closed")
        chunks += chunk
    return bytes(chunks)


def _decode(body: bytes) -> dict:
    try:
        message = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise RunnerRequestError(f"not a JSON object: {str(exc)[:80]}") from None
    if not isinstance(message, dict):
        raise RunnerRequestError("not a JSON object")
    return message


def _recv_message(sock: socket.socket, limit: int, deadline: float | None = None) -> dict:
    (size,) = struct.unpack(">I", _recv_exact(sock, 4, deadline))
    if size > limit:
        raise RunnerRequestError(f"a message of {size} bytes (at most {limit})")
    return _decode(_recv_exact(sock, size, deadline))


def _recv_request(sock: socket.socket) -> tuple[dict, list[int]]:
    """The request and its three descriptors; a refused request closes any it brought."""
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    fds: list[int] = []
    try:
        sock.settimeout(REQUEST_TIMEOUT_S)
        try:
            head, ancillary, _flags, _addr = sock.recvmsg(
                4, socket.CMSG_SPACE(4 * 3 * array.array("i").itemsize)
            )
        except TimeoutError as exc:
            raise RunnerRequestError(f"no request within {REQUEST_TIMEOUT_S:g} s") from exc
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(data[: len(data) - len(data) % received.itemsize])
                fds.extend(received)
        if not head:
            raise EOFError("the connection closed")
        head += _recv_exact(sock, 4 - len(head), deadline)
        (size,) = struct.unpack(">I", head)
        if size > MAX_REQUEST_BYTES:
            raise RunnerRequestError(f"a request of {size} bytes (at most {MAX_REQUEST_BYTES})")
        request = _decode(_recv_exact(sock, size, deadline))
        _check_request(request, fds)
    except BaseException:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise
    return request, fds


def _check_request(request: dict, fds: list[int]) -> None:
    argv, cwd, env = request.get("argv"), request.get("cwd"), request.get("env")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise RunnerRequestError("'argv' must be a list of strings")
    if not isinstance(cwd, str) or not cwd:
        raise RunnerRequestError("'cwd' must be a folder path")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
        for k, v in env.items()
    ):
        raise RunnerRequestError("'env' must map variable names to strings")
    if len(fds) != 3:
        raise RunnerRequestError(f"3 descriptors (stdin, stdout, stderr) expected, got {len(fds)}")
    if warm_command(argv) is None:
        raise RunnerRequestError(f"not a command the runner runs: {' '.join(argv)[:200]!r}")


# ------------------------------------------------------------------------------ the caller


def run_in_runner(argv: list[str]) -> int | None:
    """Run ``argv`` in the project's runner and return its exit code; None when it is not
    used (the caller then runs the command itself). Once the runner has taken the command it
    is never run a second time here."""
    if not sys.platform.startswith("linux") or warm_command(argv) is None:
        return None
    if mode() == "off":
        return None
    record = read_record()
    if record is None:
        return None
    if record["fingerprint"] != fingerprint():
        stop()  # stale: this command runs itself and starts a current one as it exits
        return None
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(REQUEST_TIMEOUT_S)
        sock.connect(record["socket"])
        request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}
        _send(sock, request, [0, 1, 2])
        first = _recv_message(sock, MAX_REPLY_BYTES, time.monotonic() + REQUEST_TIMEOUT_S)
    except (OSError, EOFError, RunnerRequestError, struct.error):
        return None
    if "pid" not in first:
        sock.close()
        return None  # busy, or refused before anything ran
    return _follow(sock, int(first["pid"]))


def _follow(sock: socket.socket, pid: int) -> int:
    """Forward signals to the child until the runner reports its end."""

    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    sock.settimeout(None)
    try:
        reply = _recv_message(sock, MAX_REPLY_BYTES)
    except (OSError, EOFError, RunnerRequestError, struct.error):
        reply = {}
    if "exit" in reply and isinstance(reply["exit"], int):
        return reply["exit"]
    if "signal" in reply and isinstance(reply["signal"], int) and reply["signal"] in _SIGNALS:
        # Killed by a signal: so is the caller, as the command's own process would have been.
        signum = reply["signal"]
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            time.sleep(1.0)
        return 128 + signum
    print(
        f"popseg: the warm runner's process {pid} ended without an exit status "
        f"(see {_state_dir() / LOG_NAME})",
        file=sys.stderr,
    )
    return 1


_SIGNALS = {int(s) for s in signal.Signals}


def start_for_next(argv: list[str], environment: dict[str, str]) -> None:
    """After a flow command ran itself: start a runner for the next one (detached), unless
    one runs or starts. ``environment``: the command's own, before it changed it. Never
    fails the command."""
    if not sys.platform.startswith("linux") or warm_command(argv) is None:
        return
    try:
        if mode() == "off" or read_record() is not None:
            return
        minutes = idle_minutes()
    except ValueError as bad:
        print(f"popseg: {bad}; no warm runner started", file=sys.stderr)
        return
    try:
        project = Path.cwd().resolve()
        state = _state_dir(project)
        state.mkdir(parents=True, exist_ok=True)
        lock = _try_lock(state / LOCK_NAME)
        if lock is None:
            return  # a runner holds it: starting or running
        os.close(lock)  # the runner takes it itself; a race loses harmlessly there
        child_env = {k: v for k, v in environment.items() if k != "POPSEG_OWNER"}
        with open(state / LOG_NAME, "ab") as log:
            subprocess.Popen(
                [sys.executable, "-m", "flows.warm_runner", str(project), str(minutes)],
                env=child_env,
                cwd=project,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            ).returncode = 0  # not waited for: it outlives this command on purpose
    except OSError:
        return


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


# ------------------------------------------------------------------------------ the runner


def serve(project: Path, minutes: float) -> int:
    """The runner: import, listen, fork a child per command; stop when idle or told to."""
    os.chdir(project)
    state = _state_dir(project)
    lock = _try_lock(state / LOCK_NAME)
    if lock is None:
        print("another runner serves this project", flush=True)
        return 0
    from flows.runtime import configure_environment

    configure_environment(project)  # as the CLI does first: the same fingerprint
    _log(f"importing for {project}")
    started = time.monotonic()
    environment = dict(os.environ)
    import importlib

    for name in PRELOADED_MODULES:
        importlib.import_module(name)
    _prepare_mappers()
    _map_installed_packages()
    # What the imports set (e.g. OpenMP's KMP_* switches): a command's own process would
    # have them after the same imports.
    set_by_imports = {k: v for k, v in os.environ.items() if environment.get(k) != v}
    _log(f"imported {len(sys.modules)} modules in {time.monotonic() - started:.1f} s")
    from tasks.run_liveness import process_start_ticks

    me = {"pid": os.getpid(), "start": process_start_ticks(os.getpid())}
    path = _socket_path(project)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a dead runner's; ours to replace under the lock
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_mask = os.umask(0o077)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_mask)
    listener.listen(16)
    listener.setblocking(False)
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    stopping: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda s, _f: stopping.append(s))
    signal.signal(signal.SIGCHLD, lambda _s, _f: None)
    signal.set_wakeup_fd(wake_write)
    record = {
        **me,
        "socket": str(path),
        "fingerprint": fingerprint(environment),
        "idle_minutes": minutes,
        "started_at": time.time(),
        "project": str(project),
    }
    temporary = state / f".{RECORD_NAME}.{os.getpid()}"
    temporary.write_text(json.dumps(record))
    os.replace(temporary, state / RECORD_NAME)
    _log(f"listening on {path}")
    children: dict[int, socket.socket] = {}
    last = time.monotonic()
    idle_s = minutes * 60
    try:
        while not stopping:
            ready, _, _ = select.select([listener, wake_read], [], [], min(1.0, idle_s / 4))
            if wake_read in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_read, 4096)
            if _reap(children):
                last = time.monotonic()
            if listener in ready:
                _accept(listener, children, (wake_read, wake_write, lock), project, set_by_imports)
                last = time.monotonic()
            if not children and time.monotonic() - last >= idle_s:
                _log(f"idle for {minutes:g} min: stopping")
                break
    finally:
        signal.set_wakeup_fd(-1)
        listener.close()
        _forget(state, me)
        for conn in children.values():
            conn.close()
        _log("stopped")
    return 0


def _prepare_mappers() -> None:
    """MLflow's ORM mappers, configured once here instead of in each command's first query."""
    with contextlib.suppress(Exception):
        from sqlalchemy.orm import configure_mappers

        configure_mappers()


def _map_installed_packages() -> None:
    """MLflow's map of installed packages to their modules (read from every installed
    distribution's metadata: ~0.8 s), built once here instead of in each command's
    ``log_model``. Installing or removing a package makes the runner stale (the fingerprint
    follows site-packages), so the map never outlives what it describes."""
    with contextlib.suppress(Exception):
        from mlflow.utils.requirements_utils import _init_modules_to_packages_map

        _init_modules_to_packages_map()


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} runner {os.getpid()}: {message}", flush=True)


def _accept(
    listener: socket.socket,
    children: dict,
    inherited: tuple[int, ...],
    project: Path,
    set_by_imports: dict[str, str],
) -> None:
    try:
        conn, _ = listener.accept()
    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
        return
    conn.setblocking(True)
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid != os.getuid():
            conn.close()
            return
        if len(children) >= MAX_CHILDREN:
            conn.settimeout(1.0)
            with contextlib.suppress(OSError):
                _send(conn, {"busy": True})
            conn.close()
            return
    except OSError:
        conn.close()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            listener.close()
            for fd in inherited:
                with contextlib.suppress(OSError):
                    os.close(fd)
            for other in children.values():
                other.close()
            _child(conn, project, set_by_imports)
        finally:
            os._exit(_CHILD_INTERNAL_ERROR)
    children[pid] = conn


def _reap(children: dict[int, socket.socket]) -> bool:
    reaped = False
    while True:
        try:
            pid, status_code, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped = True
        conn = children.pop(pid, None)
        if conn is None:
            continue
        if os.WIFSIGNALED(status_code):
            conn.settimeout(1.0)
            with contextlib.suppress(OSError):
                _send(conn, {"signal": os.WTERMSIG(status_code)})
        if os.WIFEXITED(status_code) and os.WEXITSTATUS(status_code) == _REQUEST_REFUSED:
            _log(f"request {pid} refused")
            conn.close()
            continue
        # The command's own figures (benchmarks/pipeline.py reads them: its caller's are
        # not the work's); its peak RSS counts the pages shared with this runner.
        _log(
            f"command {pid} ended: exit {os.waitstatus_to_exitcode(status_code)}, "
            f"cpu {usage.ru_utime + usage.ru_stime:.2f} s, peak RSS {usage.ru_maxrss / 1024:.0f} MB"
        )
        conn.close()


def _child(conn: socket.socket, project: Path, set_by_imports: dict[str, str]) -> None:
    """In the forked child: take the caller's request, become its command, exit with its
    code. Never returns."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    os.setsid()
    try:
        request, fds = _recv_request(conn)
    except (RunnerRequestError, OSError, EOFError, struct.error) as exc:
        conn.settimeout(1.0)
        with contextlib.suppress(OSError):
            _send(conn, {"error": str(exc)})
        os._exit(_REQUEST_REFUSED)
    if os.path.realpath(request["cwd"]) != str(project):
        for fd in fds:
            os.close(fd)
        conn.settimeout(1.0)
        with contextlib.suppress(OSError):
            _send(conn, {"error": f"'cwd' {request['cwd'][:200]!r} is not this runner's project"})
        os._exit(_REQUEST_REFUSED)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    for target, fd in zip((0, 1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.reconfigure(line_buffering=stream.isatty())
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ.update(set_by_imports)
    sys.argv = ["popseg", *request["argv"]]
    conn.settimeout(None)
    _send(conn, {"pid": os.getpid()})
    finishing: list[bool] = []
    _watch_caller(conn, finishing)

    from flows.cli.app import finish, run_app
    from flows.prefect_server import adopt_preloaded_prefect

    adopt_preloaded_prefect()
    code = run_app(request["argv"])
    finish()
    finishing.append(True)
    with contextlib.suppress(OSError):
        _send(conn, {"exit": code})
    os._exit(code)


def _watch_caller(conn: socket.socket, finishing: list[bool]) -> None:
    """A caller gone (killed outright: the socket closes) is a SIGTERM to this command."""
    import threading

    def watch() -> None:
        while True:
            try:
                data = conn.recv(4096)
            except OSError:
                data = b""
            if not data:
                break
        if not finishing:
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="popseg-caller-watch", daemon=True).start()


if __name__ == "__main__":
    sys.exit(serve(Path(sys.argv[1]).resolve(), float(sys.argv[2])))
