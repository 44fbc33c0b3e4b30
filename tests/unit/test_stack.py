"""`popseg stack` without a stack: bad inputs are one-line errors naming what is at fault,
`status`/`down` when nothing is up, and `down` never signalling a process that only reuses a
recorded pid."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from flows.stack.processes import Service, StackState, save_state
from tests.e2e.helpers import invoke

STACK_ERROR = 14


@pytest.fixture
def empty_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_busy_port_is_refused_before_anything_starts(empty_project):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = invoke("stack", "up", "--mlflow-port", str(port), "--json")
    assert result.exit_code == STACK_ERROR
    assert f"port {port}" in _error_line(result) and "mlflow" in _error_line(result)
    assert json.loads(result.stdout)["error_type"] == "StackError"
    assert not (empty_project / ".popseg" / "stack" / "postgres").exists()
    assert not (empty_project / ".popseg" / "stack" / "state.json").exists()


def test_a_missing_postgres_binary_is_named(empty_project, monkeypatch):
    monkeypatch.setenv("POPSEG_POSTGRES_BIN", str(empty_project / "no-such-bin"))
    result = invoke("stack", "up")
    assert result.exit_code == STACK_ERROR
    line = _error_line(result)
    assert "'initdb'" in line and "no-such-bin" in line
    assert not (empty_project / ".popseg" / "stack" / "state.json").exists()


def test_binary_lookup_names_the_package_to_install(monkeypatch, tmp_path):
    from flows.stack import postgres
    from tasks.errors import StackError

    monkeypatch.delenv(postgres.BIN_VARIABLE, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(postgres, "DEBIAN_BIN_GLOB", str(tmp_path / "nothing" / "*" / "bin"))
    with pytest.raises(StackError, match=r"'postgres' not found on PATH.*apt-get install"):
        postgres.binary("postgres")


def test_down_and_status_when_nothing_is_up(empty_project):
    down = invoke("stack", "down")
    assert down.exit_code == 0 and "nothing to stop" in down.stdout
    status = invoke("stack", "status", "--json")
    assert status.exit_code == STACK_ERROR
    payload = json.loads(status.stdout)
    assert payload["up"] is False and payload["components"] == {}
    assert "not up" in _error_line(status)
    env = invoke("stack", "env")
    assert env.exit_code == STACK_ERROR and "popseg stack up" in _error_line(env)


def test_status_reports_a_dead_part_and_down_spares_a_reused_pid(empty_project):
    # A live process that is not ours, recorded under its pid with another start time: what
    # a state file looks like once the recorded server died and the pid was handed out again.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        state = StackState(str(empty_project))
        state.services["postgres"] = Service("postgres", stranger.pid, "1", 5432, "pg.log")
        state.services["mlflow"] = Service("mlflow", dead.pid, "1", 5000, "mlflow.log")
        save_state(state)
        status = invoke("stack", "status", "--json")
        assert status.exit_code == STACK_ERROR
        payload = json.loads(status.stdout)
        assert payload["up"] is False
        parts = payload["components"]
        assert set(parts) == {"postgres", "mlflow"}
        assert not parts["postgres"]["running"] and not parts["mlflow"]["healthy"]
        assert parts["postgres"]["pid"] == stranger.pid and parts["mlflow"]["port"] == 5000
        assert "down: postgres, mlflow" in _error_line(status)

        down = invoke("stack", "down")
        assert down.exit_code == 0 and "nothing to stop" in down.stdout
        assert stranger.poll() is None  # not signalled
        assert (
            json.loads((empty_project / ".popseg/stack/state.json").read_text())["services"] == {}
        )
    finally:
        stranger.kill()
        stranger.wait()


def test_the_stacks_own_moto_endpoint_is_not_another_s3_store(monkeypatch):
    from flows.stack import s3

    for variable in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    own = "http://127.0.0.1:40001"
    # A shell that ran `eval "$(popseg stack env)"`: moto's endpoint and its dummy keys.
    monkeypatch.setenv("AWS_ENDPOINT_URL", own)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "popseg-stack")
    assert s3.configured(own) is None
    assert s3.configured("http://127.0.0.1:40002") == "AWS_ENDPOINT_URL"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert s3.configured(own) == "AWS_ACCESS_KEY_ID"


def test_up_outside_a_project_names_prefect_yaml(empty_project):
    result = invoke("stack", "up")
    assert result.exit_code == STACK_ERROR
    assert "prefect.yaml: not found" in _error_line(result)
    assert not (empty_project / ".popseg" / "stack" / "postgres").exists()


def test_a_service_that_dies_while_starting_leaves_no_process(tmp_path):
    import os

    from flows.stack.processes import service_environment, spawn, wait_ready
    from tasks.errors import StackError

    # The leader exits at once; the child it forked (a server's worker) would stay behind.
    log = tmp_path / "logs" / "broken.log"
    command = ["sh", "-c", f"{sys.executable} -c 'import time; time.sleep(60)' & exit 1"]
    service = spawn("broken", command, log, None, service_environment({}), tmp_path)
    with pytest.raises(StackError, match=rf"broken exited while starting; see {log}"):
        wait_ready(service, lambda: False, 30, "broken server")
    with pytest.raises(ProcessLookupError):
        os.killpg(service.pid, 0)
