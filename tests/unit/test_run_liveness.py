"""Runs left RUNNING by a process that is gone are found and ended; interrupted runs end KILLED
(on the project's real sqlite MLflow store)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import mlflow
import pytest

from tasks import run_liveness
from tasks.register import configure_mlflow, ensure_experiment


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _run_owned_by(experiment_id: str, tags: dict[str, str], name: str) -> str:
    client = mlflow.MlflowClient()
    return client.create_run(experiment_id, run_name=name, tags=tags).info.run_id


def _status(run_id: str) -> str:
    return mlflow.MlflowClient().get_run(run_id).info.status


def test_sweep_ends_the_runs_of_dead_processes_only(project_dir):
    configure_mlflow()
    experiment_id = ensure_experiment("popseg")
    client = mlflow.MlflowClient()
    mine = run_liveness.owner_tags()
    dead = {**mine, run_liveness.PID_TAG: str(_dead_pid())}
    # This process's pid, but a different start time: the pid now names another process.
    reused = {**mine, run_liveness.PID_START_TAG: "1"}
    elsewhere = {**dead, run_liveness.HOST_TAG: socket.gethostname() + "-other"}
    killed = _run_owned_by(experiment_id, dead, "killed")
    child = client.create_run(
        experiment_id, run_name="k=2", tags={"mlflow.parentRunId": killed}
    ).info.run_id
    recycled = _run_owned_by(experiment_id, reused, "pid reused")
    alive = _run_owned_by(experiment_id, mine, "alive")
    remote = _run_owned_by(experiment_id, elsewhere, "other host")
    client.create_registered_model("half")
    client.create_model_version("half", f"runs:/{killed}/model", run_id=killed)

    marked = run_liveness.sweep_dead_runs(client)

    assert set(marked) == {killed, child, recycled}
    assert [_status(r) for r in (killed, child, recycled)] == ["FAILED"] * 3
    assert _status(alive) == "RUNNING" and _status(remote) == "RUNNING"
    why = client.get_run(killed).data.tags[run_liveness.ENDED_BY_TAG]
    assert (
        why
        == f"process {dead[run_liveness.PID_TAG]} on {socket.gethostname()} died while the run was RUNNING"
    )
    assert client.search_model_versions("name = 'half'") == []  # its run never finished
    assert run_liveness.sweep_dead_runs(client) == []


def test_interrupted_runs_end_killed_with_their_nested_runs_and_failures_failed(project_dir):
    configure_mlflow()
    experiment_id = ensure_experiment("popseg")
    for interrupt in (KeyboardInterrupt, SystemExit):
        with (
            pytest.raises(interrupt),
            run_liveness.owned_run(experiment_id=experiment_id) as parent,
            run_liveness.owned_run(experiment_id=experiment_id, nested=True) as nested,
        ):
            raise interrupt()
        assert _status(parent.info.run_id) == "KILLED"
        assert _status(nested.info.run_id) == "KILLED"
        tags = mlflow.MlflowClient().get_run(parent.info.run_id).data.tags
        assert tags[run_liveness.PID_TAG] == str(os.getpid())
        assert tags[run_liveness.ENDED_BY_TAG] == (
            f"interrupted in process {os.getpid()} ({interrupt.__name__})"
        )
        assert mlflow.active_run() is None
    with pytest.raises(ValueError), run_liveness.owned_run(experiment_id=experiment_id) as run:
        raise ValueError("boom")
    assert _status(run.info.run_id) == "FAILED"


class _Terminated(BaseException):
    """Stands for Prefect's TerminationSignal: what a SIGTERM handler raises."""


@pytest.fixture
def sigterm_raises():
    def handler(signum, frame):
        raise _Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    yield handler
    signal.signal(signal.SIGTERM, previous)


def test_a_held_sigterm_raises_at_the_checkpoint_not_where_it_arrived(sigterm_raises):
    steps = []
    with pytest.raises(_Terminated), run_liveness.interrupts_held() as checkpoint:
        signal.raise_signal(signal.SIGTERM)
        steps.append("the write in progress completes")
        checkpoint()
        steps.append("the next write")  # never reached
    assert steps == ["the write in progress completes"]
    assert signal.getsignal(signal.SIGTERM) is sigterm_raises


def test_a_held_sigterm_is_delivered_on_leaving_and_a_second_one_at_once(sigterm_raises):
    with pytest.raises(_Terminated), run_liveness.interrupts_held():
        signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is sigterm_raises
    steps = []
    with pytest.raises(_Terminated), run_liveness.interrupts_held():
        signal.raise_signal(signal.SIGTERM)
        steps.append("held")
        signal.raise_signal(signal.SIGTERM)  # someone insists
        steps.append("never")
    assert steps == ["held"]
    with run_liveness.interrupts_held() as checkpoint:
        checkpoint()  # nothing held: nothing happens
    assert signal.getsignal(signal.SIGTERM) is sigterm_raises


def test_a_sigterm_during_a_store_write_ends_the_run_killed(project_dir, sigterm_raises):
    """The signal arrives in the middle of MLflow's SQLAlchemy write (a real cursor hook): held,
    it raises at the next checkpoint, so owned_run ends the run KILLED, not FAILED."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    configure_mlflow()
    experiment_id = ensure_experiment("popseg")

    def mid_write(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("INSERT INTO PARAMS"):
            signal.raise_signal(signal.SIGTERM)

    event.listen(Engine, "before_cursor_execute", mid_write)
    try:
        with (
            pytest.raises(_Terminated),
            run_liveness.interrupts_held() as checkpoint,
            run_liveness.owned_run(experiment_id=experiment_id) as run,
        ):
            mlflow.log_param("written", "whole")
            checkpoint()
            mlflow.log_param("never", "written")
    finally:
        event.remove(Engine, "before_cursor_execute", mid_write)
    assert _status(run.info.run_id) == "KILLED"
    assert mlflow.MlflowClient().get_run(run.info.run_id).data.params == {"written": "whole"}
    assert mlflow.active_run() is None


def _sigterm_during(statement_start: str):
    """A SQLAlchemy cursor hook raising SIGTERM as MLflow's first matching write executes."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    fired = []

    def mid_write(conn, cursor, statement, *args):
        if not fired and statement.lstrip().upper().startswith(statement_start):
            fired.append(statement)
            signal.raise_signal(signal.SIGTERM)

    event.listen(Engine, "before_cursor_execute", mid_write)
    return lambda: event.remove(Engine, "before_cursor_execute", mid_write), fired


def test_a_sigterm_while_a_failed_validation_is_recorded_lands_after_it(
    project_dir, sigterm_raises, tmp_path
):
    from tasks.tracking import runs

    configure_mlflow()
    experiment_id = ensure_experiment("popseg")
    validation = tmp_path / "validation_result.json"
    validation.write_text('{"success": false}')
    remove, fired = _sigterm_during("INSERT INTO METRICS")
    try:
        with pytest.raises(_Terminated):
            runs.record_failed_validation(experiment_id, {"data_md5": "abc"}, validation, 3)
    finally:
        remove()
    assert fired
    (run,) = mlflow.MlflowClient().search_runs([experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.metrics["failed_expectations"] == 3
    assert run.data.tags["data_md5"] == "abc"
    artifacts = mlflow.MlflowClient().list_artifacts(run.info.run_id, "validation")
    assert [a.path for a in artifacts] == ["validation/validation_result.json"]
    assert mlflow.active_run() is None


def test_a_sigterm_while_a_monitoring_run_is_logged_lands_after_it(project_dir, sigterm_raises):
    from tasks.config import MonitorConfig
    from tasks.monitor import compute_drift, log_monitor_run
    from tests.unit.test_monitor import blobs, make_chain

    configure_mlflow()
    client = mlflow.MlflowClient()
    experiment_id = ensure_experiment("popseg")
    with mlflow.start_run(experiment_id=experiment_id) as training:
        pass
    client.create_registered_model("segments")
    client.create_model_version("segments", "file:///nowhere", run_id=training.info.run_id)
    report = compute_drift(make_chain(), blobs(100, 1), blobs(100, 2), MonitorConfig())
    remove, fired = _sigterm_during("INSERT INTO PARAMS")
    try:
        with pytest.raises(_Terminated):
            log_monitor_run(
                report,
                report.to_json(),
                "segments-monitoring",
                "segments",
                "1",
                "new.csv",
                "md5",
                training.info.run_id,
            )
    finally:
        remove()
    assert fired
    (run,) = client.search_runs([ensure_experiment("segments-monitoring")])
    assert run.info.status == "FINISHED"
    assert run.data.tags["drift"] in ("true", "false") and run.data.metrics
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "monitor")]
    assert artifacts == ["monitor/monitor.json"]
    tags = client.get_model_version("segments", "1").tags
    assert tags["last_monitor_run_id"] == run.info.run_id
    assert mlflow.active_run() is None
