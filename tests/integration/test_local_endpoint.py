"""The local endpoint as a real server process, driven through the stock boto3
sagemaker-runtime client: request formats, the same answers as the pyfunc and the training
labels, hot swap without dropped requests, rollback, stale state, capture. Bad payloads:
tests/integration/test_local_serving_contract.py (one table with the container's test)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
from botocore.exceptions import ClientError

from flows import deploy as deploy_flow
from tasks.config import load_params
from tasks.deploy import local as deploy
from tasks.errors import DeployError, EndpointError
from tests.serving_contract import invoke_json, runtime_client

MODEL = "popseg-segmentation"
NAME = "crime"


def _invoke(client, body, content_type="text/csv"):
    return invoke_json(client, NAME, body, content_type)["predictions"]


@pytest.fixture
def served(trained_project):
    params = load_params("params.yaml")
    capture = trained_project / "capture.jsonl"
    result = deploy_flow.deploy(params, endpoint_name=NAME, capture=str(capture))
    state = deploy.read_state(NAME)
    return params, result, state, capture


def _training(trained_project):
    frame = pd.read_csv(trained_project / "data" / "raw" / "crime.csv")
    assignments = pd.read_csv(
        mlflow.artifacts.download_artifacts(
            run_id=mlflow.MlflowClient().get_model_version(MODEL, "2").run_id,
            artifact_path="reports/assignments.csv",
        )
    )
    return frame, assignments


def test_request_formats_match_pyfunc_and_training_labels(served, trained_project):
    params, result, state, capture = served
    assert result.action == "created" and result.model_version == "2"  # the champion
    assert result.smoke_test["passed"] and result.smoke_test["rows"] == params.deploy.smoke_rows
    assert result.endpoint_url == state.url and state.url.startswith("http://127.0.0.1:")
    client = runtime_client(state.url)
    frame, assignments = _training(trained_project)
    names = ["Murder", "Assault", "UrbanPop", "Rape", "Density"]
    rows = frame[names]

    plain = _invoke(client, rows.to_csv(header=False, index=False))
    header = _invoke(client, rows[names[::-1]].to_csv(index=False))  # header, other order
    instances = _invoke(
        client,
        json.dumps({"instances": [{"features": r} for r in rows.to_numpy().tolist()]}),
        "application/json",
    )
    records = _invoke(client, rows.to_json(orient="records"), "application/json")
    for other in (header, instances, records):  # text round trips: equal to ~1e-12
        assert [p["closest_cluster"] for p in other] == [p["closest_cluster"] for p in plain]
        np.testing.assert_allclose(
            [p["distance_to_cluster"] for p in other],
            [p["distance_to_cluster"] for p in plain],
            rtol=1e-9,
        )
    segments = [p["closest_cluster"] for p in plain]
    distances = np.array([p["distance_to_cluster"] for p in plain])
    # == the training labels ...
    assert segments == assignments["segment"].tolist()
    np.testing.assert_allclose(distances, assignments["distance_to_cluster"], rtol=1e-9)
    # ... == the registered pyfunc model
    # (its input schema declares every feature a double: MLflow refuses int64 columns)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(rows.astype(float))
    assert segments == pyfunc["closest_cluster"].tolist()
    np.testing.assert_allclose(distances, pyfunc["distance_to_cluster"], rtol=1e-9)
    # Missing values are filled as in training.
    gap = _invoke(client, "Murder,Assault\n13.2,236\n")
    assert isinstance(gap[0]["closest_cluster"], int)
    # Capture: one JSON line per invocation, SageMaker data-capture shape.
    # Captured after the response is sent (as SageMaker's asynchronous capture): allow the
    # server a moment to append the last line.
    deadline = time.monotonic() + 10
    while len(capture.read_text().splitlines()) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [json.loads(line) for line in capture.read_text().splitlines()]
    assert len(lines) == 1 + 4 + 1  # the smoke test, 4 formats, the gap row
    last = lines[-1]
    assert last["captureData"]["endpointInput"]["data"] == "Murder,Assault\n13.2,236\n"
    assert json.loads(last["captureData"]["endpointOutput"]["data"])["predictions"] == gap
    assert last["eventMetadata"]["modelVersion"] == "2"


def test_other_endpoint_name_and_plain_invocations_route(served):
    _, _, state, _ = served
    import urllib.request

    request = urllib.request.Request(
        state.url + "/invocations",
        data=b"13.2,236,58,21.2,71.3",
        headers={"Content-Type": "text/csv"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.headers["X-Popseg-Model-Version"] == "2"
        assert len(json.loads(reply.read())["predictions"]) == 1
    with pytest.raises(ClientError) as caught:
        runtime_client(state.url).invoke_endpoint(
            EndpointName="nope", ContentType="text/csv", Body="1"
        )
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_hot_swap_drops_no_request_then_rollback(served, trained_project):
    params, _, state, _ = served
    client = runtime_client(state.url)
    errors: list[Exception] = []
    versions: list[str] = []
    stop = threading.Event()

    def hammer():
        import urllib.request

        while not stop.is_set():
            request = urllib.request.Request(
                state.url + f"/endpoints/{NAME}/invocations",
                data=b"13.2,236,58,21.2,71.3",
                headers={"Content-Type": "text/csv"},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as reply:
                    versions.append(reply.headers["X-Popseg-Model-Version"])
            except Exception as error:
                errors.append(error)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        swapped = deploy_flow.deploy(params, version="1", endpoint_name=NAME)
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert errors == []
    assert swapped.action == "updated" and swapped.previous_version == "2"
    assert swapped.details["pid"] == state.pid  # the same process, model swapped in place
    assert "2" in versions and versions[-1] == "1"
    assert deploy.ping(state.url)["model_version"] == "1"

    rolled = deploy_flow.rollback(params, NAME, "local")
    assert rolled["rolled_back_from"] == "1" and rolled["model_version"] == "2"
    assert deploy.ping(state.url)["model_version"] == "2"
    history = [entry["model_version"] for entry in deploy.read_state(NAME).history]
    assert history == ["2", "1", "2"]
    champion = mlflow.MlflowClient().get_model_version_by_alias(MODEL, "champion")
    assert str(champion.version) == "2"
    assert len(_invoke(client, "13.2,236,58,21.2,71.3\n")) == 1


def test_failed_smoke_test_keeps_the_previous_model(served, monkeypatch):
    params, _, state, _ = served

    def broken(answer, chain, rows):
        raise DeployError("smoke test: simulated mismatch")

    monkeypatch.setattr(deploy, "check_predictions", broken)
    with pytest.raises(DeployError, match="rolled back to version 2: smoke test: simulated"):
        deploy_flow.deploy(params, version="1", endpoint_name=NAME)
    assert deploy.ping(state.url)["model_version"] == "2"
    assert deploy.read_state(NAME).model_version == "2"


def _servers_named(name: str) -> list[int]:
    """Live endpoint-server processes for ``name`` (their command lines carry it)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and deploy._pid_is_server(int(entry), name):
            found.append(int(entry))
    return found


def test_a_bug_in_the_smoke_test_leaves_no_server_and_the_previous_model(served, monkeypatch):
    """Not a PopsegError (a bug, or Ctrl-C): a new endpoint's server is stopped, a running one
    swaps back to its previous model; the exception itself propagates."""
    params, _, state, _ = served

    def buggy(answer, chain, rows):
        raise RuntimeError("simulated bug in the smoke test")

    monkeypatch.setattr(deploy, "check_predictions", buggy)
    with pytest.raises(RuntimeError, match="simulated bug"):
        deploy_flow.deploy(params, endpoint_name="fresh")
    assert deploy.read_state("fresh") is None and _servers_named("fresh") == []
    with pytest.raises(RuntimeError, match="simulated bug"):
        deploy_flow.deploy(params, version="1", endpoint_name=NAME)
    assert deploy.ping(state.url)["model_version"] == "2"
    assert deploy.read_state(NAME).model_version == "2"


def test_stale_state_is_detected_and_replaced(served):
    params, _, state, _ = served
    os.killpg(state.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while deploy.endpoint_status(state) != "stale":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(state.pid, os.WNOHANG)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    listed = deploy_flow.list_endpoints(params)
    assert [(e["name"], e["status"], e["model_version"]) for e in listed] == [(NAME, "stale", "2")]
    with pytest.raises(EndpointError, match="is stale"):
        deploy_flow.invoke_rows(NAME, [{"Murder": 1.0}])
    fresh = deploy_flow.deploy(params, endpoint_name=NAME)
    assert fresh.action == "created" and fresh.details["pid"] != state.pid
    assert deploy.endpoint_status(deploy.read_state(NAME)) == "running"
    stopped = deploy_flow.undeploy(params, NAME, "local")
    assert stopped["stopped"] and deploy_flow.list_endpoints(params) == []
    with pytest.raises(EndpointError, match="no local endpoint named"):
        deploy_flow.undeploy(params, NAME, "local")
