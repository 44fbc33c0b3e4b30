"""Alerts from real `popseg` runs (in-process CLI, the session's Prefect test server) to a real
webhook receiver on 127.0.0.1: gate_refused from `train`, drift from `monitor`, promoted from
`promote`, train_failed from a training flow that fails, deploy_failed from `deploy`; a
receiver that is down leaves the run's outcome as it was, with one warning."""

from __future__ import annotations

import json

import pandas as pd

from tasks import notify
from tests.e2e.helpers import invoke
from tests.webhook_receiver import closed_port_url, webhook_receiver

FAST_TRAIN = ["cluster.k_max=3", "evaluate.bootstrap_rounds=2", "cluster.n_init=2"]


def _sets(*overrides: str) -> list[str]:
    return [part for override in overrides for part in ("--set", override)]


def test_failed_training_and_deploy_alerts(prefect_server, project_dir, small_csv):
    with webhook_receiver() as receiver:
        hook = f"notify.webhook_url={receiver.url}"
        # A training run that fails (validation): train_failed with the one-line error.
        failed = invoke(
            "train", "--data", str(small_csv), *_sets("validate.max_rows=20", hook), "--json"
        )
        assert failed.exit_code == 4, failed.stderr
        error = json.loads(failed.stdout)["error"]
        (train_failed,) = receiver.payloads("train_failed")
        assert train_failed["error"] == " ".join(error.split())
        assert train_failed["details"]["error_type"] == "DataValidationError"
        assert train_failed["details"]["exit_code"] == 4
        assert train_failed["details"]["data"] == str(small_csv)
        assert train_failed["details"]["flow_run"]["id"]

        # A deploy that fails (no such version): deploy_failed naming the endpoint.
        deployed = invoke("deploy", "--model-version", "9", *_sets(hook), "--json")
        assert deployed.exit_code == 5, deployed.stderr
        (deploy_failed,) = receiver.payloads("deploy_failed")
        assert deploy_failed["endpoint"] == "popseg" and deploy_failed["version"] == "9"
        assert deploy_failed["error"] == json.loads(deployed.stdout)["error"]
        assert deploy_failed["details"] == {
            "target": "local",
            "error_type": "RegistryError",
            "exit_code": 5,
        }
    assert [body["event"] for body in receiver.payloads()] == ["train_failed", "deploy_failed"]


def test_gate_refused_drift_and_promoted_alerts(prefect_server, project_dir, small_csv):
    drifted = pd.read_csv(small_csv)
    drifted["alpha"] += 25.0
    drifted.to_csv(project_dir / "drifted.csv", index=False)

    with webhook_receiver() as receiver:
        hook = f"notify.webhook_url={receiver.url}"
        # A gate that refuses: champion unchanged, gate_refused with the gate's reasons.
        trained = invoke(
            "train",
            "--data",
            str(small_csv),
            *_sets(*FAST_TRAIN, "promote.min_silhouette=0.99", hook),
            "--json",
        )
        assert trained.exit_code == 0, trained.stderr
        outcome = json.loads(trained.stdout)
        assert outcome["promoted"] is False and outcome["model_version"] == "1"
        (refused,) = receiver.payloads("gate_refused")
        assert tuple(refused) == notify.PAYLOAD_KEYS
        assert refused["model"] == "popseg-segmentation" and refused["version"] == "1"
        assert refused["run_id"] == outcome["run_id"]
        assert refused["reasons"] == outcome["gate_reasons"]
        assert refused["details"]["passed"] is False
        assert refused["details"]["previous_champion"] is None
        assert refused["text"].startswith(
            "popseg: gate refused popseg-segmentation version 1, champion unchanged: silhouette "
        )
        assert "&lt; promote.min_silhouette 0.99" in refused["text"]

        # Drifted data against version 1: drift, with the monitoring run and the figures.
        monitored = invoke(
            "monitor", "--data", "drifted.csv", "--model-version", "1", *_sets(hook), "--json"
        )
        assert monitored.exit_code == 0, monitored.stderr
        report = json.loads(monitored.stdout)
        assert report["drift"] is True
        (drift,) = receiver.payloads("drift")
        assert tuple(drift) == notify.PAYLOAD_KEYS
        assert (drift["model"], drift["version"]) == ("popseg-segmentation", "1")
        assert drift["run_id"] == report["monitor_run_id"]
        assert drift["reasons"] == report["reasons"] and drift["reasons"]
        details = drift["details"]
        assert details["data_source"] == "drifted.csv" and details["n_rows"] == 30
        assert details["reference_run_id"] == outcome["run_id"]
        assert details["max_psi"] == report["max_psi"]
        assert details["drifted_features"]["alpha"] == report["features"]["alpha"]["psi"]
        assert drift["text"].startswith(
            "popseg: drift in drifted.csv against popseg-segmentation version 1 ("
        )

        # The gate run again by `popseg promote`, thresholds relaxed: promoted.
        promoted = invoke(
            "promote",
            "--version",
            "1",
            *_sets("promote.min_silhouette=0", "promote.min_stability=0", hook),
        )
        assert promoted.exit_code == 0, promoted.stderr
        (moved,) = receiver.payloads("promoted")
        assert moved["version"] == "1" and moved["run_id"] == outcome["run_id"]
        assert moved["text"] == (
            "popseg: popseg-segmentation version 1 promoted to champion (was version none)"
        )

    # One alert per event, nothing else.
    assert [body["event"] for body in receiver.payloads()] == ["gate_refused", "drift", "promoted"]

    # The receiver down: the same monitoring succeeds with the same result, one warning.
    down = f"notify.webhook_url={closed_port_url()}"
    retry_fast = ["notify.retries=1", "notify.retry_backoff_s=0.1"]
    unreachable = invoke(
        "monitor",
        "--data",
        "drifted.csv",
        "--model-version",
        "1",
        *_sets(down, *retry_fast),
        "--json",
    )
    assert unreachable.exit_code == 0, unreachable.stderr
    assert json.loads(unreachable.stdout)["drift"] is True
    warnings = [line for line in unreachable.stderr.splitlines() if "notify drift" in line]
    assert len(warnings) == 1, unreachable.stderr
    assert "not delivered to http://127.0.0.1:" in warnings[0]
    assert "after 2 attempt(s)" in warnings[0] and "WARNING" in warnings[0]


def test_approval_needed_and_approved_alerts(prefect_server, project_dir, small_csv):
    with webhook_receiver() as receiver:
        hook = f"notify.webhook_url={receiver.url}"
        trained = invoke(
            "train",
            "--data",
            str(small_csv),
            *_sets(*FAST_TRAIN, "promote.require_approval=true", hook),
            "--json",
        )
        assert trained.exit_code == 0, trained.stderr
        outcome = json.loads(trained.stdout)
        assert outcome["promoted"] is False and outcome["model_version"] == "1"
        # Passed the gate with approval required: approval_needed, no promoted alert.
        (needed,) = receiver.payloads("approval_needed")
        assert (needed["model"], needed["version"]) == ("popseg-segmentation", "1")
        assert needed["run_id"] == outcome["run_id"]
        assert needed["details"]["approve"] == "popseg approve 1"
        assert "waits for approval" in needed["text"]
        assert receiver.payloads("promoted") == []

        approved = invoke("approve", "1", "--reason", "looks right", *_sets(hook))
        assert approved.exit_code == 0, approved.stderr
        (moved,) = receiver.payloads("promoted")
        assert moved["version"] == "1" and moved["reasons"] == ["looks right"]
        assert moved["details"]["previous_champion"] is None
    assert [body["event"] for body in receiver.payloads()] == ["approval_needed", "promoted"]
