"""The scheduled retrain flow with ``promote.require_approval``: after drift and a passed gate
the flow run pauses (Prefect's pause-with-input, on the session's Prefect test server) with the
candidate version in its tag; `popseg approve` resumes it and it deploys; an answer given
through the Prefect API (as the UI's form sends it) is recorded on the version; no answer in
time ends it undeployed."""

from __future__ import annotations

import json
import threading
import time

import mlflow
import pytest

from tests.e2e.helpers import invoke

MODEL = "popseg-segmentation"
ENDPOINT = "popseg-approval-test"
RETRAIN = [
    "promote.require_approval=true",
    "promote.min_silhouette=0",
    "promote.min_stability=0",
    "promote.max_silhouette_drop=1.0",
    "evaluate.bootstrap_rounds=3",
    "cluster.k_min=3",
    "cluster.k_max=3",
    f"deploy.endpoint_name={ENDPOINT}",
]


class _Retrain(threading.Thread):
    """The retrain flow in a thread of this process, as a served deployment runs it."""

    def __init__(self, data, overrides):
        super().__init__(daemon=True)
        self.data, self.overrides = str(data), overrides
        self.result, self.error = None, None

    def run(self):
        from flows.schedules import scheduled_retrain

        try:
            self.result = scheduled_retrain("params.yaml", self.data, self.overrides)
        except BaseException as error:
            self.error = error


def _paused_runs(tag: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[tag]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])),
            )
        )


def _wait_paused(flow: _Retrain, tag: str, timeout_s: float = 180.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert flow.is_alive(), f"the flow ended before pausing: {flow.error!r} {flow.result}"
        paused = _paused_runs(tag)
        if paused:
            return paused
        time.sleep(0.5)
    raise AssertionError(f"no flow run paused with tag {tag}")


def _client():
    from tasks.register import configure_mlflow

    configure_mlflow()
    return mlflow.MlflowClient()


def _aliases() -> dict[str, str]:
    return {k: str(v) for k, v in _client().get_registered_model(MODEL).aliases.items()}


def test_retrain_pauses_for_approval_and_deploys_after_approve(
    prefect_server, drifted_csv, monkeypatch
):
    flow = _Retrain(drifted_csv, [*RETRAIN, "promote.approval_timeout_s=300"])
    flow.start()
    try:
        [paused] = _wait_paused(flow, f"popseg-approval:{MODEL}:v3")
        # Waiting: the new version is the candidate, champion and endpoints untouched.
        assert _aliases()["candidate"] == "3" and _aliases()["champion"] == "2"
        assert paused.state.state_details.run_input_keyset is not None
        endpoints = json.loads(invoke("endpoints", "--json").stdout)["endpoints"]
        assert endpoints == []
        monkeypatch.setenv("POPSEG_USER", "oncall")
        approved = invoke("approve", "3", "--reason", "drift explained", "--json")
        assert approved.exit_code == 0, approved.stderr
        payload = json.loads(approved.stdout)
        assert payload["resumed_flow_runs"] == [paused.name] and payload["champion"] == "3"
    finally:
        flow.join(timeout=180)
    assert not flow.is_alive() and flow.error is None, repr(flow.error)
    result = flow.result
    assert result["monitor"]["retrain"]["approval"] == "pending"
    assert result["approval"]["state"] == "approved" and result["approval"]["by"] == "oncall"
    assert result["deploy"]["model_version"] == "3"
    assert _aliases()["champion"] == "3" and "candidate" not in _aliases()

    listed = json.loads(invoke("versions", "--json").stdout)["versions"]
    row = {item["version"]: item for item in listed}["3"]
    assert row["aliases"] == ["challenger", "champion"]
    assert row["approval"]["state"] == "approved" and row["approval"]["by"] == "oncall"
    assert row["approval"]["reason"] == "drift explained"
    assert row["endpoints"] == [{"name": ENDPOINT, "target": "local", "status": "running"}]
    assert row["gate_passed"] is True and row["k"] == 3


@pytest.mark.slow
def test_reject_answered_through_the_prefect_api_deploys_nothing(prefect_server, drifted_csv):
    from prefect.flow_runs import resume_flow_run

    flow = _Retrain(drifted_csv, [*RETRAIN, "promote.approval_timeout_s=300"])
    flow.start()
    try:
        [paused] = _wait_paused(flow, f"popseg-approval:{MODEL}:v3")
        # What the Prefect UI's resume form sends.
        resume_flow_run(paused.id, run_input={"decision": "reject", "reason": "too few rows"})
    finally:
        flow.join(timeout=180)
    assert not flow.is_alive() and flow.error is None, repr(flow.error)
    assert flow.result["deploy"] is None
    assert flow.result["approval"]["state"] == "rejected"
    assert flow.result["approval"]["by"] == f"prefect-ui (flow run {paused.name})"
    assert _aliases()["champion"] == "2" and "candidate" not in _aliases()
    tags = _client().get_model_version(MODEL, "3").tags
    assert tags["approval"] == "rejected" and tags["approval_reason"] == "too few rows"
    assert json.loads(invoke("endpoints", "--json").stdout)["endpoints"] == []


@pytest.mark.slow
def test_no_decision_in_time_ends_the_flow_undeployed(prefect_server, drifted_csv):
    from tasks.errors import ApprovalError

    flow = _Retrain(drifted_csv, [*RETRAIN, "promote.approval_timeout_s=3"])
    flow.start()
    flow.join(timeout=240)
    assert not flow.is_alive()
    assert isinstance(flow.error, ApprovalError), repr(flow.error)
    assert "not approved or rejected within promote.approval_timeout_s=3 s" in str(flow.error)
    # Still the candidate, still pending: a person can approve it later.
    assert _aliases()["champion"] == "2" and _aliases()["candidate"] == "3"
    assert _client().get_model_version(MODEL, "3").tags["approval"] == "pending"
    assert json.loads(invoke("endpoints", "--json").stdout)["endpoints"] == []
    assert not _paused_runs(f"popseg-approval:{MODEL}:v3")


def test_serve_records_its_api_for_the_commands(prefect_server, project_dir):
    import socket

    from prefect.settings import get_current_settings

    from flows.prefect_server import API_RECORD, recorded_api, recorded_api_url

    url = str(get_current_settings().api.url)
    assert recorded_api_url() is None
    with recorded_api(url):
        assert json.loads(API_RECORD.read_text())["api_url"] == url
        assert recorded_api_url() == url
    assert not API_RECORD.exists()
    # A record left behind by a server that is gone is not used.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{probe.getsockname()[1]}/api"
    API_RECORD.parent.mkdir(parents=True, exist_ok=True)
    API_RECORD.write_text(json.dumps({"api_url": gone, "pid": 1}))
    assert recorded_api_url() is None
