"""The warm runner (flows/warm_runner.py): flow commands run in a forked child of a process
that has their imports loaded, with the caller's arguments, environment, streams and exit
code; a stale runner is never used; a killed caller stops its command; the socket refuses
what is not a well-formed request from this user, and a slow or idle caller blocks nobody.

Each test has its own project folder and stops the runner (and kept Prefect server) it
started. The suite runs with POPSEG_WARM_RUNNER=off (tests/conftest.py); these turn it on."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows import prefect_keeper, warm_runner
from tests.conftest import ROOT
from tests.integration.test_kept_prefect_server import _env as kept_server_env
from tests.reliability.test_crash_signals import (
    REAP_WAIT_S,
    _leftovers,
    _no_unfinished_run_left,
    _store_rows,
)

POPSEG = str(Path(sys.executable).with_name("popseg"))
RUNNER_START_S = 180.0


@pytest.fixture
def project(tmp_path):
    """params.yaml and a 90-row CSV in three groups; runner and kept server stopped after."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    rng = np.random.default_rng(0)
    values = np.vstack([rng.normal(c, 1.0, size=(30, 4)) for c in (0.0, 6.0, 12.0)])
    pd.DataFrame(values, columns=list("abcd")).to_csv(tmp_path / "data.csv", index=False)
    yield tmp_path
    warm_runner.stop(tmp_path)
    prefect_keeper.stop(tmp_path)


def _env(project: Path, **extra: str) -> dict[str, str]:
    """As a user's shell has it (the kept server's tests' environment), with the runner on."""
    runner_on = {"POPSEG_WARM_RUNNER": "on", "POPSEG_PREFECT_SERVER": "keep"}
    return kept_server_env(project, **{**runner_on, **extra})


def _popseg(project: Path, *args: str, timeout: float = 600, **extra: str):
    return subprocess.run(
        [POPSEG, *args],
        cwd=project,
        env=_env(project, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _start_runner(project: Path, minutes: float = 30, **extra: str) -> dict:
    """The runner as a flow command starts it, waited for until it listens."""
    state = project / ".popseg"
    state.mkdir(exist_ok=True)
    with open(state / "warm-runner.log", "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "flows.warm_runner", str(project), str(minutes)],
            cwd=project,
            env=_env(project, **extra),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return _wait_for_runner(project)


def _wait_for_runner(project: Path, other_than: int | None = None) -> dict:
    deadline = time.monotonic() + RUNNER_START_S
    while time.monotonic() < deadline:
        record = warm_runner.read_record(project)
        if record and record["pid"] != other_than:
            return record
        time.sleep(0.1)
    raise AssertionError(f"no runner within {RUNNER_START_S:g} s:\n{_runner_log(project)}")


def _runner_log(project: Path) -> str:
    path = project / ".popseg" / "warm-runner.log"
    return path.read_text(errors="replace") if path.exists() else "(no log)"


def _served(project: Path) -> list[tuple[int, int]]:
    """(pid, exit code) of each command the runner ran, from its log."""
    return [
        (int(pid), int(code))
        for pid, code in re.findall(r"command (\d+) ended: exit (-?\d+)", _runner_log(project))
    ]


def _wait_served(project: Path, count: int, timeout: float = 30) -> list[tuple[int, int]]:
    deadline = time.monotonic() + timeout
    while len(_served(project)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return _served(project)


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid and stat[0] != "Z":
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    return prefect_keeper._alive(pid, "")  # any start time: runs and is not a zombie


# ----------------------------------------------------------------------------- whole commands


def test_a_flow_command_runs_in_the_runner_with_its_outcome_and_the_runner_can_be_stopped(
    project,
):
    cold = _popseg(project, "train", "--data", "data.csv")
    assert cold.returncode == 0, cold.stderr[-3000:]
    assert _served(project) == []  # the first command ran itself...
    record = _wait_for_runner(project)  # ...and started a runner as it exited

    warm = _popseg(project, "train", "--data", "data.csv", "--json")
    assert warm.returncode == 0, warm.stderr[-3000:]
    assert _wait_served(project, 1)[-1][1] == 0, _runner_log(project)
    outcome = json.loads(warm.stdout)
    assert outcome["model_version"] == "2"
    versions = _store_rows(project, "select version from model_versions order by version")
    assert versions == [(1,), (2,)]

    # A refusal goes the same way, with the same code and words as in a process of its own.
    refused = _popseg(project, "train", "--data", "missing.csv")
    own = _popseg(project, "train", "--data", "missing.csv", POPSEG_WARM_RUNNER="off")
    assert _wait_served(project, 2)[-1][1] == refused.returncode
    assert refused.returncode == own.returncode != 0
    assert "missing.csv" in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == own.stderr.strip().splitlines()[-1]
    assert len(_served(project)) == 2  # `off` did not use it

    status = json.loads(_popseg(project, "runner", "status", "--json").stdout)
    assert status["running"] and status["current"] and status["pid"] == record["pid"]
    stopped = _popseg(project, "runner", "stop", "--json")
    assert json.loads(stopped.stdout) == {"stopped": True}
    assert not _alive(record["pid"])
    assert not (project / ".popseg" / "warm-runner.json").exists()
    assert not Path(record["socket"]).exists()
    assert json.loads(_popseg(project, "runner", "status", "--json").stdout)["running"] is False


def test_a_runner_whose_imports_no_longer_match_is_not_used_and_is_replaced(project):
    record = _start_runner(project)
    # NUMBA_* is read when numba is imported: a runner imported without it cannot serve.
    refused = _popseg(project, "train", "--data", "missing.csv", NUMBA_OPT="2")
    assert refused.returncode != 0 and "missing.csv" in refused.stderr
    assert _served(project) == []
    assert not _alive(record["pid"])
    fresh = _wait_for_runner(project, other_than=record["pid"])
    assert fresh["fingerprint"] != record["fingerprint"]
    # The new one matches that environment: the next such command uses it.
    again = _popseg(project, "train", "--data", "missing.csv", NUMBA_OPT="2")
    assert again.returncode == refused.returncode
    assert len(_wait_served(project, 1)) == 1


def test_a_killed_runner_is_not_trusted_and_its_socket_is_replaced(project):
    record = _start_runner(project)
    os.kill(record["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(record["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert Path(record["socket"]).exists()  # left behind by the SIGKILL
    refused = _popseg(project, "train", "--data", "missing.csv")
    assert refused.returncode != 0 and "missing.csv" in refused.stderr
    fresh = _wait_for_runner(project, other_than=record["pid"])
    assert fresh["socket"] == record["socket"]
    again = _popseg(project, "train", "--data", "missing.csv")
    assert again.returncode == refused.returncode
    assert _wait_served(project, 1)[-1][1] == refused.returncode


def test_stop_waits_for_a_runner_still_importing_and_stops_it(project):
    """`popseg runner stop` right after the command that started a runner (still importing,
    not yet recorded) stops it once it listens, instead of missing it."""
    state = project / ".popseg"
    state.mkdir(exist_ok=True)
    with open(state / "warm-runner.log", "ab") as log:
        starting = subprocess.Popen(
            [sys.executable, "-m", "flows.warm_runner", str(project), "30"],
            cwd=project,
            env=_env(project),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while "importing" not in _runner_log(project):
        assert time.monotonic() < deadline, _runner_log(project)
        time.sleep(0.05)
    assert warm_runner.read_record(project) is None  # still importing
    stopped = _popseg(project, "runner", "stop", "--json")
    assert json.loads(stopped.stdout) == {"stopped": True}, stopped.stderr[-2000:]
    assert starting.wait(timeout=30) == 0
    assert not (state / "warm-runner.json").exists()
    assert json.loads(_popseg(project, "runner", "stop", "--json").stdout) == {"stopped": False}


def test_the_runner_stops_when_idle(project):
    record = _start_runner(project, minutes=0.02)
    deadline = time.monotonic() + 30
    while _alive(record["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(record["pid"])
    assert "idle for 0.02 min: stopping" in _runner_log(project)
    assert not (project / ".popseg" / "warm-runner.json").exists()
    assert not Path(record["socket"]).exists()


def test_bad_runner_settings_are_refused_by_name(project):
    bad = _popseg(project, "train", "--data", "data.csv", POPSEG_WARM_RUNNER="sometimes")
    assert bad.returncode == 2
    assert "POPSEG_WARM_RUNNER='sometimes'" in bad.stderr and "on, off" in bad.stderr
    idle = _popseg(project, "train", "--data", "data.csv", POPSEG_WARM_IDLE_MINUTES="-1")
    # Read when a runner is to start: the command ran, then said why no runner started.
    assert idle.returncode == 0, idle.stderr[-2000:]
    assert "POPSEG_WARM_IDLE_MINUTES='-1': a positive number" in idle.stderr
    assert "no warm runner started" in idle.stderr
    assert warm_runner.read_record(project) is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_signalled_caller_stops_its_command_and_leaves_nothing_behind(project, signum):
    """SIGTERM is forwarded to the command; SIGKILL closes the socket, which the command
    takes as SIGTERM. Either way: no process left, no run RUNNING, nothing half-registered."""
    rng = np.random.default_rng(1)
    values = np.vstack([rng.normal(c, 1.0, size=(20_000, 6)) for c in (0.0, 5.0, 10.0)])
    pd.DataFrame(values, columns=list("abcdef")).to_csv(project / "big.csv", index=False)
    record = _start_runner(project)
    log = project / "caller.log"
    with open(log, "wb") as sink:
        caller = subprocess.Popen(
            [POPSEG, "train", "--data", "big.csv"],
            cwd=project,
            env=_env(project),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 240
    while not _store_rows(project, "select run_uuid from runs where status = 'RUNNING'"):
        assert caller.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    (command,) = _children_of(record["pid"])
    caller.send_signal(signum)
    code = caller.wait(timeout=120)
    deadline = time.monotonic() + 60
    while _alive(command) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(command), f"the command outlived its caller:\n{log.read_text()[-3000:]}"
    # The caller ends as the command did (SIGTERM: Prefect lets it through after the run is
    # marked), or was killed itself.
    assert code == -signum
    if signum == signal.SIGTERM:
        assert [c for pid, c in _wait_served(project, 1) if pid == command] == [-signum]
    _no_unfinished_run_left(project)
    assert _store_rows(project, "select version from model_versions") == []
    assert _alive(record["pid"])  # the runner serves on

    def left() -> list[str]:  # the kept Prefect server stays, by design
        return [p for p in _leftovers(project, {os.getpid(), record["pid"]}) if "prefect" not in p]

    # The command's watchdog (flows/reaper.py) sweeps after it and then exits itself.
    deadline = time.monotonic() + REAP_WAIT_S
    while left() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left() == []


# ----------------------------------------------------------------------------- the socket


def _connect(record: dict) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(record["socket"])
    return sock


def _reply(sock: socket.socket) -> dict | None:
    """The runner's next framed reply; None when it closed without one."""
    head = b""
    while len(head) < 4:
        chunk = sock.recv(4 - len(head))
        if not chunk:
            return None
        head += chunk
    (size,) = struct.unpack(">I", head)
    assert size <= warm_runner.MAX_REPLY_BYTES
    body = b""
    while len(body) < size:
        chunk = sock.recv(size - len(body))
        assert chunk
        body += chunk
    return json.loads(body)


def _frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def _request(project: Path, argv: list[str], **fields) -> bytes:
    body = {"argv": argv, "cwd": str(project), "env": {"PATH": "/usr/bin"}, **fields}
    return _frame(json.dumps(body).encode())


def _send_with_fds(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    import array

    sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    sock.sendall(data[sent:])


@pytest.fixture(scope="module")
def _shared_runner(tmp_path_factory):
    """One runner for the socket tests (none of them runs a command)."""
    project = tmp_path_factory.mktemp("socket-project")
    (project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    record = _start_runner(project)
    yield project, record
    warm_runner.stop(project)


@pytest.fixture
def runner(_shared_runner):
    project, record = _shared_runner
    yield project, record
    assert _alive(record["pid"]), f"the runner died:\n{_runner_log(project)}"
    deadline = time.monotonic() + 10  # every child it forked has been reaped
    while _children_of(record["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _children_of(record["pid"]) == []


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "at most"),  # 'GET ' read as a length
        (struct.pack(">I", 2**31) + b"{}", "at most"),
        (_frame(b"{" * 50_000), "not a JSON object"),  # deep nesting
        (_frame(b"[" * 200_000 + b"]" * 200_000), "not a JSON object"),
        (_frame(b"\xff\xfe not utf-8"), "not a JSON object"),
        (_frame(b"[1, 2]"), "not a JSON object"),
        (_frame(b'{"argv": "train", "cwd": "/", "env": {}}'), "'argv' must be a list"),
        (_frame(b'{"argv": ["train"], "cwd": 7, "env": {}}'), "'cwd' must be"),
        (_frame(b'{"argv": ["train"], "cwd": "/x", "env": {"A": 1}}'), "'env' must map"),
        (_frame(b'{"argv": ["train"], "cwd": "/x", "env": {"A=B": "1"}}'), "'env' must map"),
    ],
)
def test_malformed_requests_are_refused_and_the_runner_serves_on(runner, data, words):
    project, record = runner
    with _connect(record) as sock:
        sock.sendall(data)
        reply = _reply(sock)
    assert reply is not None and words in reply["error"], reply
    assert _served(project) == []


def test_a_well_formed_request_without_its_streams_or_for_another_command_is_refused(runner):
    project, record = runner
    with _connect(record) as sock:  # no descriptors passed
        sock.sendall(_request(project, ["train", "--data", "data.csv"]))
        assert "3 descriptors" in _reply(sock)["error"]
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for argv, words in (
            (["ui"], "not a command the runner runs"),
            (["train", "--help"], "not a command the runner runs"),
            (["stage", "ingest"], "not a command the runner runs"),
        ):
            with _connect(record) as sock:
                _send_with_fds(sock, _request(project, argv), [null, null, null])
                assert words in _reply(sock)["error"]
        with _connect(record) as sock:
            _send_with_fds(sock, _request(project, ["train"], cwd="/tmp"), [null, null, null])
            assert "not this runner's project" in _reply(sock)["error"]
        with _connect(record) as sock:  # a fourth descriptor
            _send_with_fds(sock, _request(project, ["train"]), [null, null, null, null])
            assert "3 descriptors" in _reply(sock)["error"]
    finally:
        os.close(null)
    assert _served(project) == []


def test_a_slow_or_idle_caller_blocks_nobody_and_is_dropped(runner):
    _project, record = runner
    idle = _connect(record)  # says nothing
    lying = _connect(record)
    lying.sendall(struct.pack(">I", 100) + b'{"argv"')  # announces 100 bytes, sends 7
    started = time.monotonic()
    with _connect(record) as prompt:  # served while the other two hang
        prompt.sendall(_frame(b"[]"))
        assert "not a JSON object" in _reply(prompt)["error"]
    assert time.monotonic() - started < warm_runner.REQUEST_TIMEOUT_S
    for sock, words in ((idle, "no request within"), (lying, "no complete request within")):
        with sock:
            reply = _reply(sock)
            assert reply is not None and words in reply["error"], reply
    closed = _connect(record)
    closed.sendall(struct.pack(">I", 10) + b"{")
    closed.close()  # mid-request: its child just ends
    with _connect(record) as after:
        after.sendall(_frame(b"{}"))
        assert "'argv'" in _reply(after)["error"]


def test_beyond_its_limit_of_commands_at_once_the_runner_answers_busy(runner):
    project, record = runner
    served = len(_served(project))
    # Each hangs its child until the request deadline (REQUEST_TIMEOUT_S).
    hanging = [_connect(record) for _ in range(warm_runner.MAX_CHILDREN)]
    try:
        deadline = time.monotonic() + 10
        while len(_children_of(record["pid"])) < warm_runner.MAX_CHILDREN:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with _connect(record) as extra:
            assert _reply(extra) == {"busy": True}
        # A caller told "busy" runs the command itself: nothing is lost.
        refused = _popseg(project, "train", "--data", "missing.csv")
        assert refused.returncode != 0 and "missing.csv" in refused.stderr
        assert len(_served(project)) == served
    finally:
        for sock in hanging:
            sock.close()


# ----------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["train", "--data", "x.csv"], "train"),
        (["-v", "run"], "run"),
        (["--verbose", "monitor", "capture.jsonl"], "monitor"),
        (["train", "--help"], None),
        (["--version"], None),
        (["promote"], None),
        (["stage", "train"], None),
        ([], None),
    ],
)
def test_only_flow_commands_go_to_the_runner(argv, command):
    assert warm_runner.warm_command(argv) == command


def test_the_fingerprint_follows_import_time_variables_only():
    base = {"PATH": "/usr/bin", "NUMBA_NUM_THREADS": "2"}
    same = warm_runner.fingerprint(base)
    assert warm_runner.fingerprint({**base, "PREFECT_API_URL": "http://x/api"}) == same
    assert warm_runner.fingerprint({**base, "POPSEG_OWNER": "1.2"}) == same
    assert warm_runner.fingerprint({**base, "TERM": "dumb"}) == same
    assert warm_runner.fingerprint({**base, "NUMBA_NUM_THREADS": "1"}) != same
    assert warm_runner.fingerprint({**base, "PREFECT_LOGGING_LEVEL": "DEBUG"}) != same
    assert warm_runner.fingerprint({**base, "OMP_NUM_THREADS": "1"}) != same


def test_a_project_path_too_long_for_a_socket_gets_a_private_one(tmp_path):
    deep = tmp_path / ("d" * 120)
    deep.mkdir()
    path = warm_runner._socket_path(deep)
    assert len(os.fsencode(path)) < 100
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert warm_runner._socket_path(tmp_path) == tmp_path / ".popseg" / "warm-runner.sock"
