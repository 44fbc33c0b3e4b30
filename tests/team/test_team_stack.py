"""Team mode end to end on a real stack (PostgreSQL, moto S3, `mlflow server`, `prefect
server` + worker), brought up once by `popseg stack up`: two checkouts training at once, where
the runs and artifacts land, a deployment run on the worker, the tracking server killed and
PostgreSQL restarted, and `stack down` leaving nothing behind. In file order: the last test
brings the stack down."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests import processes
from tests.team.conftest import POPSEG, clean_environment, popseg

pytestmark = pytest.mark.team

MODEL = "popseg-segmentation"
FAST = ["--set", "evaluate.bootstrap_rounds=5", "--set", "cluster.k_max=4"]
TRAIN_TIMEOUT_S = 600


def _train_command() -> list[str]:
    return [POPSEG, "train", "--data", "data.csv", *FAST, "--json"]


def _rest(tracking_uri: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        tracking_uri + path, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _client(team_stack):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=team_stack["payload"]["tracking_uri"])


def _versions(team_stack) -> list[str]:
    found = _client(team_stack).search_model_versions(f"name = '{MODEL}'")
    return sorted((v.version for v in found), key=int)


def _champion(team_stack) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return _client(team_stack).get_model_version_by_alias(MODEL, "champion").version
    except MlflowException:
        return None


def _state(team_stack) -> dict:
    return json.loads((team_stack["dir"] / ".popseg/stack/state.json").read_text())


def _postgres(team_stack, database: str):
    import psycopg

    payload = team_stack["payload"]
    return psycopg.connect(
        host="127.0.0.1",
        port=payload["ports"]["postgres"],
        user="popseg",
        password=Path(payload["postgres_password_file"]).read_text().strip(),
        dbname=database,
        connect_timeout=5,
    )


@pytest.fixture(scope="module")
def concurrent_trainings(team_stack, checkout):
    """Two checkouts run `popseg train` at the same moment on the same data."""
    assert _versions(team_stack) == []  # the registry starts empty
    folders = [checkout(), checkout()]
    started = [processes.start(_train_command(), f, team_stack["env"]) for f in folders]
    outputs = processes.outputs(started, timeout=TRAIN_TIMEOUT_S)
    return {"folders": folders, "outcomes": [json.loads(out) for out in outputs]}


def test_two_checkouts_train_at_once_and_champion_moves_once(team_stack, concurrent_trainings):
    first, second = sorted(concurrent_trainings["outcomes"], key=lambda o: int(o["model_version"]))
    assert (first["model_version"], second["model_version"]) == ("1", "2")
    assert first["promoted"] and "no current champion" in first["gate_reasons"]
    # The second gate ran after the first moved `champion`, and compared against it.
    assert second["promoted"], second["gate_reasons"]
    assert any("not worse than the champion" in r for r in second["gate_reasons"])
    client = _client(team_stack)
    assert _champion(team_stack) == "2"
    assert client.get_model_version(MODEL, "2").tags.get("previous_champion") == "1"
    assert "previous_champion" not in client.get_model_version(MODEL, "1").tags
    for outcome in (first, second):
        assert outcome["tracking_uri"] == team_stack["payload"]["tracking_uri"]
    # No local store in either checkout: everything went to the stack.
    for folder in concurrent_trainings["folders"]:
        assert not (folder / "mlflow.db").exists() and not (folder / "mlartifacts").exists()


def test_artifacts_in_s3_backend_in_postgres_runs_over_rest(team_stack, concurrent_trainings):
    import boto3

    payload = team_stack["payload"]
    run_ids = {o["run_id"] for o in concurrent_trainings["outcomes"]}
    environment = payload["environment"]
    s3 = boto3.client(
        "s3",
        endpoint_url=payload["s3_endpoint_url"],
        aws_access_key_id=environment["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=environment["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    assert payload["artifact_destination"] == "s3://popseg-artifacts/mlflow"
    keys = [
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket="popseg-artifacts", Prefix="mlflow/"
        )
        for item in page.get("Contents", [])
    ]
    for run_id in run_ids:
        assert any(f"/{run_id}/artifacts/chain/chain.json" in key for key in keys), keys[:20]
    assert any(key.endswith("/MLmodel") for key in keys)

    assert payload["backend_store_uri"].startswith("postgresql+psycopg://popseg:***@127.0.0.1:")
    with _postgres(team_stack, "mlflow") as connection:
        stored = {row[0] for row in connection.execute("SELECT run_uuid FROM runs")}
        versions = {
            row[0]
            for row in connection.execute(
                "SELECT version FROM model_versions WHERE name = %s", (MODEL,)
            )
        }
    assert run_ids <= stored and versions == {1, 2}

    experiment_ids = {o["experiment_id"] for o in concurrent_trainings["outcomes"]}
    listed = _rest(
        payload["tracking_uri"],
        "/api/2.0/mlflow/runs/search",
        {"experiment_ids": sorted(experiment_ids), "max_results": 100},
    )
    assert run_ids <= {run["info"]["run_id"] for run in listed["runs"]}


DEPLOYMENT_RUN = """
import json, sys
from prefect.deployments import run_deployment
run = run_deployment("popseg-scheduled-train/train", timeout=float(sys.argv[1]),
                     parameters={"overrides": ["evaluate.bootstrap_rounds=5", "cluster.k_max=4"]})
print(json.dumps({"id": str(run.id), "state": run.state.type.value}))
"""


def test_a_deployment_run_completes_on_the_worker_and_registers(team_stack):
    before = _versions(team_stack)
    result = subprocess.run(
        [sys.executable, "-c", DEPLOYMENT_RUN, str(TRAIN_TIMEOUT_S)],
        env=team_stack["env"],
        capture_output=True,
        text=True,
        timeout=TRAIN_TIMEOUT_S + 60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    run = json.loads(result.stdout.strip().splitlines()[-1])
    assert run["state"] == "COMPLETED", run
    # Registered in the shared MLflow (the stack's bundled-data params: a new version).
    after = _versions(team_stack)
    assert len(after) == len(before) + 1
    worker_log = Path(team_stack["payload"]["logs"]["prefect_worker"]).read_text()
    assert run["id"] in worker_log  # the stack's worker ran it


def _running_runs(tracking_uri: str) -> list[dict]:
    experiments = _rest(tracking_uri, "/api/2.0/mlflow/experiments/search", {"max_results": 100})
    found = _rest(
        tracking_uri,
        "/api/2.0/mlflow/runs/search",
        {
            "experiment_ids": [e["experiment_id"] for e in experiments["experiments"]],
            "filter": "attributes.status = 'RUNNING'",
        },
    )
    return found.get("runs", [])


def test_tracking_server_killed_mid_training_then_postgres_restarted(team_stack, checkout):
    payload = team_stack["payload"]
    versions, champion = _versions(team_stack), _champion(team_stack)
    folder = checkout()
    # Fail fast instead of MLflow's default minutes of retries.
    env = {
        **team_stack["env"],
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    }
    training = processes.start(_train_command(), folder, env)
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while not _running_runs(payload["tracking_uri"]):
        assert training.poll() is None, training.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.5)
    os.killpg(_state(team_stack)["services"]["mlflow"]["pid"], signal.SIGKILL)
    _, err = training.communicate(timeout=TRAIN_TIMEOUT_S)
    assert training.returncode == 5, err[-2000:]  # RegistryError
    error = [line for line in err.splitlines() if line.startswith("error:")]
    assert error and payload["tracking_uri"] in error[-1]

    again = popseg(["stack", "up", "--json"], team_stack["dir"], team_stack["env"])
    assert again.returncode == 0, again.stderr[-2000:]
    restarted = json.loads(again.stdout)
    # Back on its port: the worker's URLs still hold, so it (and any flow run) keeps running.
    assert restarted["started"] == ["mlflow"]
    assert restarted["tracking_uri"] == payload["tracking_uri"]  # same port, exports stay
    # Nothing half-registered: the same versions, champion unmoved.
    assert _versions(team_stack) == versions and _champion(team_stack) == champion

    postmaster = _state(team_stack)["services"]["postgres"]["pid"]
    os.kill(postmaster, signal.SIGINT)  # PostgreSQL's fast shutdown
    while Path(f"/proc/{postmaster}").exists() and not _zombie(postmaster):
        time.sleep(0.2)
    status = popseg(["stack", "status", "--json"], team_stack["dir"], team_stack["env"])
    assert status.returncode == 14
    assert json.loads(status.stdout)["components"]["postgres"]["running"] is False
    again = popseg(["stack", "up", "--json"], team_stack["dir"], team_stack["env"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["started"] == ["postgres"]

    trained = processes.outputs(
        [processes.start(_train_command(), folder, team_stack["env"])], TRAIN_TIMEOUT_S
    )
    outcome = json.loads(trained[0])
    assert outcome["model_version"] == str(int(versions[-1]) + 1)
    assert _versions(team_stack) == [*versions, outcome["model_version"]]


def test_stack_up_killed_midway_then_down_leaves_nothing(team_stack):
    """`stack up` SIGKILLed while it starts the servers: what it started is recorded (the
    services run detached by design) and `stack down` stops all of it."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="popseg-team-kill-"))
    folder.chmod(0o755)
    try:
        shutil.copy(team_stack["dir"] / "prefect.yaml", folder / "prefect.yaml")
        env = clean_environment()
        up = subprocess.Popen(
            [POPSEG, "stack", "up"],
            cwd=folder,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        state_file = folder / ".popseg/stack/state.json"
        deadline = time.monotonic() + 300
        while "mlflow" not in (
            json.loads(state_file.read_text())["services"] if state_file.exists() else {}
        ):
            assert up.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        up.kill()
        up.wait(timeout=30)
        recorded = json.loads(state_file.read_text())["services"]
        assert {"postgres", "s3", "mlflow"} <= set(recorded)
        down = popseg(["stack", "down"], folder, env)
        assert down.returncode == 0, down.stderr[-2000:]
        assert "mlflow, s3, postgres" in down.stdout
        _assert_nothing_left(folder, recorded)
    finally:
        popseg(["stack", "down"], folder, clean_environment())
        shutil.rmtree(folder, ignore_errors=True)


def _assert_nothing_left(folder: Path, services: dict) -> None:
    for service in services.values():
        with pytest.raises(ProcessLookupError):
            os.killpg(service["pid"], 0)  # the whole group is gone, workers too
        if service["port"]:
            with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
                probe.connect(("127.0.0.1", service["port"]))
    # No process names the folder (PostgreSQL's backends, in sessions of their own, exit with
    # the server).
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            assert str(folder) not in command, command


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def test_up_again_reuses_everything_and_down_leaves_nothing(team_stack):
    again = popseg(["stack", "up", "--json"], team_stack["dir"], team_stack["env"])
    assert again.returncode == 0, again.stderr[-2000:]
    payload = json.loads(again.stdout)
    assert payload["started"] == []
    services = _state(team_stack)["services"]
    assert payload["pids"] == {name: s["pid"] for name, s in services.items()}
    status = popseg(["stack", "status", "--json"], team_stack["dir"], team_stack["env"])
    assert status.returncode == 0 and json.loads(status.stdout)["up"] is True

    down = popseg(["stack", "down"], team_stack["dir"], team_stack["env"])
    assert down.returncode == 0, down.stderr[-2000:]
    assert "stopped: prefect_worker, prefect_server, mlflow, s3, postgres" in down.stdout
    _assert_nothing_left(team_stack["dir"], services)
    status = popseg(["stack", "status", "--json"], team_stack["dir"], team_stack["env"])
    assert status.returncode == 14 and json.loads(status.stdout)["components"] == {}
