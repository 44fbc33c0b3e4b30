"""Nothing is left behind when a real `popseg` process is killed or stopped: no server or
worker process, nothing listening, no MLflow run RUNNING, no model version of an unfinished
run, no Prefect flow run "Running".

Each test starts the console script in a temporary project (params.yaml copied in, its own
MLflow store and PREFECT_HOME), waits for a real point of the run (a log line, the parent run
appearing in the store), then signals it."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ROOT

POPSEG = str(Path(sys.executable).with_name("popseg"))
REAP_WAIT_S = 20.0


@pytest.fixture
def crash_project(tmp_path):
    """A project folder with params.yaml and a 1,200-row CSV in three clear groups."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    rng = np.random.default_rng(0)
    values = np.vstack([rng.normal(c, 1.0, size=(400, 4)) for c in (0.0, 6.0, 12.0)])
    frame = pd.DataFrame(values, columns=["a", "b", "c", "d"])
    frame.insert(0, "name", [f"r{i}" for i in range(len(frame))])
    frame.to_csv(tmp_path / "data.csv", index=False)
    return tmp_path


def _env(project: Path) -> dict[str, str]:
    """As a user's shell has it: no test-session Prefect server, the project's own stores."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_API", "PREFECT_HOME", "POPSEG_OWNER"))
    }
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    env["PREFECT_HOME"] = str(project / ".prefect")
    return env


def _start(project: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    log = project / "popseg.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [POPSEG, *args],
            cwd=project,
            env=_env(project),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    return process, log


def _run(project: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [POPSEG, *args],
        cwd=project,
        env=_env(project),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _wait_for(condition, what: str, process: subprocess.Popen, log: Path, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if process.poll() is not None:
            raise AssertionError(f"popseg exited {process.returncode} before {what}:\n{_tail(log)}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"timed out waiting for {what}:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def _log_has(log: Path, pattern: str):
    def check():
        return re.search(pattern, log.read_text(errors="replace"))

    return check


def _store_rows(project: Path, query: str) -> list[tuple]:
    """Read the MLflow sqlite store directly (read-only, tolerant of a store being created)."""
    db = project / "mlflow.db"
    if not db.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
            return c.execute(query).fetchall()
    except sqlite3.OperationalError:
        return []


def _leftovers(project: Path, exclude: set[int]) -> list[str]:
    """Live processes (not zombies) whose command line or environment names the project."""
    needle = str(project).encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes()
            environ = Path(entry.path, "environ").read_bytes()
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (needle in cmdline or needle in environ):
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {command[:200]}")
    return found


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _assert_nothing_left(project: Path, ports: list[int]) -> None:
    deadline = time.monotonic() + REAP_WAIT_S
    left = _leftovers(project, {os.getpid()})
    while (left or any(map(_listening, ports))) and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _leftovers(project, {os.getpid()})
    assert left == [], f"processes left behind: {left}"
    assert [p for p in ports if _listening(p)] == [], "a port of the run still listens"


def _prefect_port(log: Path) -> list[int]:
    found = re.search(
        r"Starting a local Prefect server on http://127\.0\.0\.1:(\d+)", log.read_text()
    )
    return [int(found.group(1))] if found else []


def _no_unfinished_run_left(project: Path) -> None:
    """No run RUNNING; every model version's run FINISHED (none half-registered)."""
    running = _store_rows(project, "select run_uuid, name from runs where status = 'RUNNING'")
    assert running == [], f"runs left RUNNING: {running}"
    versions = _store_rows(
        project,
        "select v.version, r.status from model_versions v join runs r on v.run_id = r.run_uuid",
    )
    assert all(status == "FINISHED" for _, status in versions), versions


# ----------------------------------------------------------------------------- SIGKILL


def test_sigkill_just_after_the_prefect_server_starts_leaves_no_server(crash_project):
    """The representative case (fast): Prefect's ephemeral uvicorn server was orphaned
    (ppid 1, still listening) when popseg was killed with SIGKILL; the local server popseg
    now starts in the background must not be either."""
    process, log = _start(crash_project, "train", "--data", "data.csv")
    _wait_for(_log_has(log, r"Starting a local Prefect server"), "the Prefect server", process, log)
    time.sleep(1.0)  # the uvicorn child is importing Prefect now
    process.kill()
    assert process.wait(timeout=30) == -signal.SIGKILL
    _assert_nothing_left(crash_project, _prefect_port(log))


@pytest.mark.slow
def test_sigkill_during_the_sweep_leaves_no_server(crash_project):
    process, log = _start(crash_project, "train", "--data", "data.csv")
    # prepare has finished: the k sweep (train task) is running.
    _wait_for(
        _log_has(log, r"Finished in state \w+\(.*\) \[prepare-\w+\]"), "the sweep", process, log
    )
    process.kill()
    process.wait(timeout=30)
    _assert_nothing_left(crash_project, _prefect_port(log))
    assert _store_rows(crash_project, "select run_uuid from runs") == []


def _start_train_until_its_run_is_in_the_store(project):
    """A real `popseg train`, returned once its parent MLflow run exists: it is registering."""
    process, log = _start(project, "train", "--data", "data.csv")
    _wait_for(
        lambda: _store_rows(project, "select run_uuid from runs where status = 'RUNNING'"),
        "the parent run in the store",
        process,
        log,
    )
    return process, log


@pytest.mark.slow
def test_sigkill_during_register_leaves_no_running_run_nor_half_registered_version(
    crash_project,
):
    process, log = _start_train_until_its_run_is_in_the_store(crash_project)
    process.kill()
    process.wait(timeout=30)
    _assert_nothing_left(crash_project, _prefect_port(log))
    killed = _store_rows(crash_project, "select run_uuid from runs where status = 'RUNNING'")
    assert killed, "the run was killed after it finished: register was not hit"

    # The next command that opens the store ends the dead process's runs.
    nxt = _run(crash_project, "promote", "--json")
    assert "Traceback" not in nxt.stderr, nxt.stderr[-3000:]
    _no_unfinished_run_left(crash_project)
    (run_id,) = killed[0]
    ended = _store_rows(
        crash_project,
        f"select r.status, t.value from runs r join tags t on t.run_uuid = r.run_uuid "
        f"where r.run_uuid = '{run_id}' and t.key = 'popseg.ended_by'",
    )
    assert ended and ended[0][0] == "FAILED" and "died while the run was RUNNING" in ended[0][1]


# ----------------------------------------------------------------------------- SIGTERM


@pytest.mark.slow
def test_sigterm_during_register_ends_the_run_killed_and_the_flow_run_crashed(crash_project):
    process, log = _start_train_until_its_run_is_in_the_store(crash_project)
    process.terminate()
    process.wait(timeout=60)
    _assert_nothing_left(crash_project, _prefect_port(log))
    statuses = _store_rows(crash_project, "select status from runs where name like 'train-k%'")
    assert statuses == [("KILLED",)], f"{statuses}\n{_tail(log)}"
    _no_unfinished_run_left(crash_project)
    prefect_db = crash_project / ".prefect" / "prefect.db"
    with contextlib.closing(sqlite3.connect(f"file:{prefect_db}?mode=ro", uri=True)) as c:
        states = c.execute("select state_type from flow_run").fetchall()
    assert states and all(s in ("CRASHED", "CANCELLED") for (s,) in states), states


# ----------------------------------------------------------------------------- popseg ui


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_ui(project: Path) -> tuple[subprocess.Popen, Path, int]:
    port = _free_port()
    process, log = _start(project, "ui", "--port", str(port))
    _wait_for(lambda: _listening(port), "the MLflow UI", process, log, timeout=300)
    return process, log, port


@pytest.mark.slow
def test_sigterm_of_popseg_ui_leaves_nothing_listening(crash_project):
    process, log, port = _start_ui(crash_project)
    process.terminate()
    assert process.wait(timeout=30) == 0, _tail(log)
    _assert_nothing_left(crash_project, [port])


@pytest.mark.slow
def test_sigkill_of_popseg_ui_leaves_nothing_listening(crash_project):
    process, _, port = _start_ui(crash_project)
    process.kill()
    process.wait(timeout=30)
    _assert_nothing_left(crash_project, [port])


# ----------------------------------------------------------------------------- popseg serve


def _api(api: str, path: str, payload: dict) -> list[dict]:
    import json
    import urllib.request

    request = urllib.request.Request(
        api.rstrip("/") + path,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _serve_until_a_flow_run_runs(project: Path, *settings: str):
    process, log = _start(
        project,
        "serve",
        "--only",
        "train",
        "--every",
        "5",
        "--port",
        "0",
        "--set",
        f"data.path={project / 'data.csv'}",
        *settings,
    )
    found = _wait_for(_log_has(log, r"Prefect API (\S+)"), "the Prefect API", process, log)
    api = found.group(1)

    def running():
        try:
            runs = _api(
                api, "/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}}}
            )
        except OSError:
            return None
        return [run["id"] for run in runs if run["deployment_id"]]

    (flow_run_id,) = _wait_for(running, "a scheduled flow run running", process, log, 300)
    return process, log, api, flow_run_id


def _state_of(states: dict[str, str], flow_run_id: str) -> str | None:
    return states.get(flow_run_id) or states.get(flow_run_id.replace("-", ""))


def _flow_run_states(project: Path) -> dict[str, str]:
    prefect_db = project / ".prefect" / "prefect.db"
    with contextlib.closing(sqlite3.connect(f"file:{prefect_db}?mode=ro", uri=True)) as c:
        return dict(c.execute("select id, state_type from flow_run").fetchall())


@pytest.mark.slow
def test_sigterm_of_popseg_serve_lets_the_running_flow_finish_then_stops(crash_project):
    process, log, api, flow_run_id = _serve_until_a_flow_run_runs(crash_project)
    process.terminate()
    assert process.wait(timeout=400) == 0, _tail(log)
    output = log.read_text()
    assert "Traceback" not in output, _tail(log)
    assert re.search(r"^stopped \(SIGTERM: the running flow run finished\)$", output, re.M)
    port = int(re.search(r":(\d+)/api", api).group(1))
    _assert_nothing_left(crash_project, [port])
    states = _flow_run_states(crash_project)
    assert _state_of(states, flow_run_id) == "COMPLETED", states
    assert not {"RUNNING", "PENDING"} & set(states.values()), states
    _no_unfinished_run_left(crash_project)


@pytest.mark.slow
def test_sigterm_of_popseg_serve_cancels_a_flow_run_that_outlasts_the_timeout(crash_project):
    process, log, api, flow_run_id = _serve_until_a_flow_run_runs(
        crash_project, "--set", "schedule.stop_timeout_s=1"
    )
    process.terminate()
    assert process.wait(timeout=400) == 0, _tail(log)
    output = log.read_text()
    assert "Traceback" not in output, _tail(log)
    assert re.search(r"^stopped \(SIGTERM: flow run\(s\) \S+ cancelled\)$", output, re.M), output
    port = int(re.search(r":(\d+)/api", api).group(1))
    _assert_nothing_left(crash_project, [port])
    states = _flow_run_states(crash_project)
    assert _state_of(states, flow_run_id) in ("CANCELLED", "CRASHED"), states
    assert not {"RUNNING", "PENDING"} & set(states.values()), states
    _no_unfinished_run_left(crash_project)


@pytest.mark.slow
def test_sigkill_of_popseg_serve_leaves_no_server_nor_flow_run_process(crash_project):
    process, _, api, _ = _serve_until_a_flow_run_runs(crash_project)
    process.kill()
    process.wait(timeout=30)
    port = int(re.search(r":(\d+)/api", api).group(1))
    _assert_nothing_left(crash_project, [port])
    nxt = _run(crash_project, "promote", "--json")
    assert "Traceback" not in nxt.stderr, nxt.stderr[-3000:]
    _no_unfinished_run_left(crash_project)


# ----------------------------------------------------------------------------- kept server


@pytest.mark.slow
def test_sigkill_of_a_command_on_the_kept_server_leaves_its_flow_run_crashed(
    crash_project, monkeypatch
):
    """The kept Prefect server outlives a SIGKILLed `popseg train` (it is in its own session),
    and marks the flow run that command left RUNNING as Crashed (its owner tag names a dead
    process)."""
    from flows import prefect_keeper

    monkeypatch.setenv("POPSEG_PREFECT_SERVER", "keep")
    try:
        process, log = _start_train_until_its_run_is_in_the_store(crash_project)
        record = prefect_keeper.read_record(crash_project)
        assert record is not None, _tail(log)
        api = record["api_url"]

        def running():
            runs = _api(
                api, "/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}}}
            )
            return [run["id"] for run in runs]

        (flow_run_id,) = _wait_for(running, "the flow run running", process, log)
        process.kill()
        process.wait(timeout=30)
        assert prefect_keeper.read_record(crash_project) == record  # the kept server stays

        def crashed():
            (run,) = _api(api, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
            return run if run["state_type"] == "CRASHED" else None

        deadline = time.monotonic() + 60
        while (run := crashed()) is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert run is not None, "the kept server did not mark the dead command's run Crashed"
        assert "gone" in run["state"]["message"]
    finally:
        prefect_keeper.stop(crash_project)
