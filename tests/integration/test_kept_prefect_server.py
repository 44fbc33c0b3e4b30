"""The kept local Prefect server (flows/prefect_keeper.py, POPSEG_PREFECT_SERVER=keep): one
server per project shared by one-shot commands, trusted only while its keeper (same pid and
start time) runs, started once by commands started together, stopped when idle or by
`popseg prefect stop`.

Each test has its own project folder and stops the kept server it started."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows import prefect_keeper
from tests.conftest import ROOT

POPSEG = str(Path(sys.executable).with_name("popseg"))

# Leases the kept server as a command does, waits for it, prints what it got, then exits
# (its atexit handler releases the lease).
_ACQUIRE = """
import json, sys
from flows.prefect_server import flow_api, wait_for_flow_api
api = flow_api()
wait_for_flow_api()
record = json.load(open(".popseg/prefect-kept.json"))
print(json.dumps(dict(api=api, pid=record["pid"], imported="prefect" in sys.modules)))
"""


@pytest.fixture
def project(tmp_path):
    """A project with params.yaml and a 60-row CSV in three groups; its kept server (if any)
    is stopped at the end."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    rng = np.random.default_rng(0)
    values = np.vstack([rng.normal(c, 1.0, size=(20, 4)) for c in (0.0, 6.0, 12.0)])
    pd.DataFrame(values, columns=list("abcd")).to_csv(tmp_path / "data.csv", index=False)
    yield tmp_path
    prefect_keeper.stop(tmp_path)


def _env(project: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_API", "PREFECT_HOME", "POPSEG_OWNER", "POPSEG_PREFECT"))
    }
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}",
        PREFECT_HOME=str(project / ".prefect"),
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


def _acquire(project: Path, **extra: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _ACQUIRE],
        cwd=project,
        env=_env(project, **extra),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _popseg(project: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [POPSEG, *args],
        cwd=project,
        env=_env(project, **extra),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _post(api: str, path: str, body: dict) -> list[dict]:
    request = urllib.request.Request(
        api.rstrip("/") + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def _wait(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_second_command_reuses_the_kept_server(project):
    first = _acquire(project)
    second = _acquire(project)
    assert first["api"] == second["api"]
    assert first["pid"] == second["pid"]
    assert not first["imported"]  # chosen before Prefect is imported
    # It outlives the commands that used it, in its own session (the reaper leaves it).
    assert _alive(first["pid"])
    assert os.getsid(first["pid"]) == first["pid"]


def test_two_commands_started_together_start_one_server(project):
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda _: _acquire(project), range(2)))
    assert got[0]["pid"] == got[1]["pid"]
    assert got[0]["api"] == got[1]["api"]


def test_a_stale_record_is_not_trusted(project):
    state = project / ".popseg"
    state.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    # A dead keeper, then a live pid that started at another time (a recycled pid).
    for pid, start in ((dead.pid, "1"), (os.getpid(), "1")):
        (state / "prefect-kept.json").write_text(
            json.dumps({"api_url": "http://127.0.0.1:9/api", "pid": pid, "start": start})
        )
        got = _acquire(project)
        assert got["pid"] not in (dead.pid, os.getpid())
        assert got["api"] != "http://127.0.0.1:9/api"
        prefect_keeper.stop(project)


def test_the_kept_server_stops_itself_when_idle(project):
    got = _acquire(project, POPSEG_PREFECT_IDLE_MINUTES="0.05")  # 3 s
    assert _alive(got["pid"])
    _wait(lambda: not _alive(got["pid"]), "the idle keeper to exit", timeout=60)
    assert not (project / ".popseg" / "prefect-kept.json").exists()
    with pytest.raises(OSError):
        urllib.request.urlopen(got["api"] + "/health", timeout=2)


def test_popseg_prefect_status_and_stop(project):
    assert json.loads(_popseg(project, "prefect", "status", "--json").stdout)["running"] is False
    got = _acquire(project)
    status = json.loads(_popseg(project, "prefect", "status", "--json").stdout)
    assert status["running"] and status["healthy"]
    assert status["pid"] == got["pid"] and status["api_url"] == got["api"]
    assert status["commands_using"] == 0
    assert 0 < status["idle_minutes_left"] <= 30
    # `popseg approve` looks for paused flow runs there.
    assert prefect_keeper.running_api_url(project) == got["api"]
    stopped = _popseg(project, "prefect", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not _alive(got["pid"])
    assert "not running" in _popseg(project, "prefect", "status").stdout
    assert prefect_keeper.running_api_url(project) is None
    assert "not running" in _popseg(project, "prefect", "stop").stdout


def test_a_bad_server_mode_is_a_config_error(project):
    result = _popseg(project, "train", "--data", "data.csv", POPSEG_PREFECT_SERVER="forever")
    assert result.returncode == 2
    assert "POPSEG_PREFECT_SERVER" in result.stderr
    assert "keep" in result.stderr and "per-command" in result.stderr
    assert not (project / ".popseg" / "prefect-kept.json").exists()


@pytest.mark.slow
def test_train_on_the_kept_server_loses_nothing_at_its_fast_exit(project):
    """The console script ends with os._exit: the flow run's state and logs are in Prefect and
    the model version in MLflow before it does."""
    for _ in range(2):
        result = _popseg(project, "train", "--data", "data.csv")
        assert result.returncode == 0, result.stderr[-3000:]
    api = prefect_keeper.read_record(project)["api_url"]
    runs = _post(api, "/flow_runs/filter", {"sort": "EXPECTED_START_TIME_DESC"})
    assert len(runs) == 2
    assert {run["state_type"] for run in runs} == {"COMPLETED"}
    assert all(any(t.startswith("popseg.owner:") for t in run["tags"]) for run in runs)
    logs = _post(api, "/logs/filter", {"logs": {"flow_run_id": {"any_": [runs[0]["id"]]}}})
    assert any("Finished in state Completed" in entry["message"] for entry in logs)
    with sqlite3.connect(project / "mlflow.db") as store:
        versions = store.execute("select count(*) from model_versions").fetchone()[0]
        finished = store.execute("select count(*) from runs where status = 'FINISHED'").fetchone()
    assert versions == 2
    assert finished[0] >= 2
