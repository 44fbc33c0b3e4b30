"""Human approval (``promote.require_approval``) and `popseg versions`, in-process on a trained
project (crime model: version 1, then version 2 promoted to champion over it): a version that
passes the gate becomes the candidate, `approve` moves champion and records who, when and why,
`reject` leaves champion, and refused decisions move nothing."""

from __future__ import annotations

import json

import mlflow
import pytest

from tests.e2e.helpers import invoke

MODEL = "popseg-segmentation"
APPROVAL = ["--set", "promote.require_approval=true"]
# The real gate, its thresholds relaxed so the challenger passes against champion 2.
RELAXED = [
    "--set",
    "promote.min_silhouette=0",
    "--set",
    "promote.min_stability=0",
    "--set",
    "promote.max_silhouette_drop=1.0",
]


def _json(result, code: int = 0):
    assert result.exit_code == code, result.stderr + result.stdout
    return json.loads(result.stdout)


def _client():
    from tasks.register import configure_mlflow

    configure_mlflow()
    return mlflow.MlflowClient()


def _alias(client, alias: str) -> str | None:
    aliases = client.get_registered_model(MODEL).aliases
    return str(aliases[alias]) if alias in aliases else None


def test_gate_with_approval_then_approve(trained_project, monkeypatch):
    # The gate on version 1 against champion 2, approval required. (A training with approval
    # required, paused and approved in the retrain flow: tests/integration/test_approval_flow.py.)
    gated = _json(invoke("promote", "--version", "1", *APPROVAL, *RELAXED, "--json"))
    assert gated["passed"] is True and gated["promoted"] is False and gated["candidate"] is True
    assert any("awaiting approval" in reason for reason in gated["reasons"])
    client = _client()
    assert _alias(client, "champion") == "2" and _alias(client, "candidate") == "1"
    tags = client.get_model_version(MODEL, "1").tags
    assert tags["gate_passed"] == "true" and tags["approval"] == "pending"
    assert tags["approval_requested_at"].endswith("Z")

    # Refused decisions name the version and move nothing.
    other = invoke("approve", "2", "--reason", "wrong one")
    assert other.exit_code == 13
    assert "version 2 is not the candidate" in other.stderr and "candidate is version 1" in (
        other.stderr
    )
    unknown = invoke("approve", "9", "--json")
    assert unknown.exit_code == 5 and "has no version 9" in json.loads(unknown.stdout)["error"]
    assert _alias(client, "champion") == "2" and _alias(client, "candidate") == "1"

    monkeypatch.setenv("POPSEG_USER", "alice")
    approved = _json(invoke("approve", "1", "--reason", "segments reviewed", "--json"))
    assert approved["decision"] == "approved" and approved["by"] == "alice"
    assert approved["champion_before"] == "2" and approved["champion"] == "1"
    assert approved["resumed_flow_runs"] == []  # no retrain flow run was waiting
    assert _alias(client, "champion") == "1" and _alias(client, "candidate") is None
    tags = client.get_model_version(MODEL, "1").tags
    assert tags["approval"] == "approved" and tags["approval_by"] == "alice"
    assert tags["approval_reason"] == "segments reviewed"
    assert tags["approval_at"].endswith("Z") and tags["previous_champion"] == "2"

    again = invoke("approve", "1", "--json")
    assert again.exit_code == 13
    assert "version 1 was already approved by alice" in json.loads(again.stdout)["error"]
    assert _alias(client, "champion") == "1"


def test_reject_leaves_champion(trained_project, monkeypatch):
    # The gate on version 1 against champion 2, approval required: candidate, not champion.
    gated = _json(invoke("promote", "--version", "1", *APPROVAL, *RELAXED, "--json"))
    assert gated["passed"] is True and gated["promoted"] is False and gated["candidate"] is True
    text = invoke("promote", "--version", "1", *APPROVAL, *RELAXED)
    assert "candidate, awaiting approval" in text.stdout
    client = _client()
    assert _alias(client, "champion") == "2" and _alias(client, "candidate") == "1"

    missing_reason = invoke("reject", "1")
    assert missing_reason.exit_code == 2 and "--reason" in missing_reason.stderr
    blank = invoke("reject", "1", "--reason", "  ")
    assert blank.exit_code == 2 and "reject version 1: --reason is required" in blank.stderr
    assert _alias(client, "candidate") == "1"

    monkeypatch.delenv("POPSEG_USER", raising=False)
    rejected = invoke("reject", "1", "--reason", "segment 2 is too small")
    assert rejected.exit_code == 0, rejected.stderr
    assert "version 1 rejected: champion unchanged (version 2)" in rejected.stdout
    assert _alias(client, "champion") == "2" and _alias(client, "candidate") is None
    tags = client.get_model_version(MODEL, "1").tags
    assert tags["approval"] == "rejected" and tags["approval_reason"] == "segment 2 is too small"
    assert "@" in tags["approval_by"]  # user@host without POPSEG_USER

    approve_rejected = invoke("approve", "1")
    assert approve_rejected.exit_code == 13 and "already rejected" in approve_rejected.stderr
    assert _alias(client, "champion") == "2"


def test_a_newer_candidate_supersedes_the_pending_one(trained_project):
    from tasks.approval import read_approval, request_approval

    _json(invoke("promote", "--version", "1", *APPROVAL, *RELAXED, "--json"))
    client = _client()
    # Version 2 (the champion) cannot be gated again; put it up directly, as the gate would.
    assert request_approval(MODEL, "2") == "1"
    assert _alias(client, "candidate") == "2"
    superseded = read_approval(MODEL, "1")
    assert superseded.state == "superseded" and superseded.reason == "superseded by version 2"
    refused = invoke("approve", "1")
    assert refused.exit_code == 13
    assert "version 1 is not the candidate (superseded by version 2)" in refused.stderr


def test_versions_after_two_trainings(trained_project, trained_store):
    listed = _json(invoke("versions", "--json"))
    assert listed["model_name"] == MODEL
    rows = listed["versions"]
    assert [row["version"] for row in rows] == ["2", "1"]  # newest first
    expected_keys = {
        "version",
        "aliases",
        "created",
        "run_id",
        "k",
        "silhouette",
        "stability",
        "gate_passed",
        "gate_reasons",
        "approval",
        "data_md5",
        "endpoints",
    }
    client = _client()
    for row in rows:
        assert set(row) == expected_keys
        trained = trained_store["versions"][row["version"]]
        assert row["run_id"] == trained.run_id and row["k"] == trained.k
        assert row["data_md5"] == trained.data_md5 and len(row["data_md5"]) == 32
        assert row["silhouette"] == pytest.approx(trained.metrics["silhouette"])
        assert row["stability"] == pytest.approx(trained.metrics["stability"])
        assert row["gate_passed"] is trained.promoted
        assert row["gate_reasons"] == trained.gate_reasons
        assert row["created"].endswith("Z") and row["created"][:2] == "20"
        assert row["approval"] == {
            "state": None,
            "by": None,
            "at": None,
            "reason": None,
            "requested_at": None,
        }
        assert row["endpoints"] == []
        created = client.get_model_version(MODEL, row["version"]).creation_timestamp
        assert row["created"][:16] == _iso_minutes(created)
    assert rows[0]["aliases"] == ["challenger", "champion"] and rows[1]["aliases"] == []
    assert rows[0]["k"] == 4

    text = invoke("versions")
    assert text.exit_code == 0, text.stderr
    assert "registered versions" in text.stdout and "challenger, champion" in text.stdout
    assert rows[0]["data_md5"][:12] in text.stdout


def test_versions_of_an_empty_registry(project_dir):
    result = invoke("versions", "--json")
    assert result.exit_code == 5
    assert "is not registered" in json.loads(result.stdout)["error"]


def _iso_minutes(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M")
