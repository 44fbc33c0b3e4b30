"""The monitoring flow on a trained project (crime model, version 2 = champion): no drift on the
training data, drift on a shifted file, the MLflow monitoring run and model-version tags, bad
input recording nothing, and retraining on drift."""

from __future__ import annotations

import json

import mlflow
import pytest

from tasks import monitor
from tasks.config import load_params
from tasks.errors import DataError, RegistryError
from tasks.ingest import load_crime, md5_bytes

MODEL = "popseg-segmentation"
MONITORING = "popseg-segmentation-monitoring"
FEATURES = ["Murder", "Assault", "UrbanPop", "Rape", "Density"]
RETRAIN_FAST = ["evaluate.bootstrap_rounds=5", "cluster.k_min=4", "cluster.k_max=4"]


def _monitor(path, version=None, retrain=False, overrides=()):
    from flows.monitoring import monitor_flow

    return monitor_flow(load_params("params.yaml", list(overrides)), str(path), version, retrain)


def _client():
    """A client on this test's store (MLflow keeps the last set URI process-wide)."""
    from tasks.register import configure_mlflow

    configure_mlflow()
    return mlflow.MlflowClient()


def _monitoring_runs(client):
    experiment = client.get_experiment_by_name(MONITORING)
    if experiment is None:  # made by the first monitoring run
        return []
    return client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{monitor.RUN_TYPE_TAG}` = 'monitor'"
    )


@pytest.fixture
def crime_csv(trained_project):
    path = trained_project / "crime-new.csv"
    load_crime().to_csv(path, index=False)
    return path


def test_training_data_is_no_drift_and_recorded(crime_csv):
    outcome = _monitor(crime_csv)
    assert outcome.model_version == "2" and not outcome.drift and outcome.reasons == []
    payload = outcome.to_json()
    assert payload["n_rows"] == payload["n_reference"] == 50
    assert list(payload["features"]) == FEATURES
    assert all(f["psi"] == 0.0 and not f["drifted"] for f in payload["features"].values())
    assert sum(s["ref_share"] for s in payload["segments"]) == pytest.approx(1.0)
    assert all(s["shift"] == 0.0 for s in payload["segments"])

    client = _client()
    run = client.get_run(outcome.monitor_run_id)
    version = client.get_model_version(MODEL, "2")
    assert run.data.tags[monitor.RUN_TYPE_TAG] == "monitor"
    assert {k: run.data.tags[k] for k in ("model_name", "model_version", "drift")} == {
        "model_name": MODEL,
        "model_version": "2",
        "drift": "false",
    }
    assert run.data.tags["data_source"] == str(crime_csv)
    assert run.data.tags["data_md5"] == md5_bytes(crime_csv.read_bytes())
    assert run.data.tags["reference_run_id"] == version.run_id
    assert run.data.metrics["drift"] == 0.0 and run.data.metrics["n_rows"] == 50
    assert run.data.metrics["n_reasons"] == 0 and run.data.metrics["max_psi"] == 0.0
    assert {f"psi_{name}" for name in FEATURES} <= set(run.data.metrics)
    # Monitoring runs have their own experiment, linked from the version.
    monitoring = client.get_experiment_by_name(MONITORING)
    assert run.info.experiment_id == monitoring.experiment_id
    assert monitoring.tags["mlflow.experimentKind"] == "custom_model_development"
    assert version.tags["monitoring_experiment"] == MONITORING
    assert version.tags["monitoring_experiment_id"] == monitoring.experiment_id
    artifact = json.loads(
        mlflow.artifacts.load_text(f"runs:/{outcome.monitor_run_id}/{monitor.ARTIFACT_PATH}")
    )
    assert artifact == json.loads(json.dumps(payload))
    assert version.tags[monitor.LAST_RUN_TAG] == outcome.monitor_run_id
    assert version.tags[monitor.LAST_DRIFT_TAG] == "false"


def test_drifted_file_is_drift_with_reasons(drifted_csv):
    outcome = _monitor(drifted_csv)
    assert outcome.drift
    payload = outcome.to_json()
    assert payload["features"]["Murder"]["drifted"] and payload["features"]["Assault"]["drifted"]
    assert not payload["features"]["UrbanPop"]["drifted"]
    assert any(r.startswith("feature Murder: PSI ") for r in outcome.reasons)
    assert any(r.startswith("feature Assault: PSI ") for r in outcome.reasons)
    assert payload["distance"]["median_ratio"] > 1.5 and payload["distance"]["drifted"]
    client = _client()
    run = client.get_run(outcome.monitor_run_id)
    assert run.data.tags["drift"] == "true" and run.data.metrics["drift"] == 1.0
    assert run.data.metrics["n_reasons"] == len(outcome.reasons)
    assert run.data.metrics["psi_Assault"] == pytest.approx(payload["features"]["Assault"]["psi"])
    assert run.data.metrics["max_psi"] == pytest.approx(payload["max_psi"])
    tags = client.get_model_version(MODEL, "2").tags
    assert tags[monitor.LAST_RUN_TAG] == outcome.monitor_run_id
    assert tags[monitor.LAST_DRIFT_TAG] == "true"
    assert outcome.retrain is None  # not requested: nothing trained
    assert sorted(str(v.version) for v in client.search_model_versions(f"name='{MODEL}'")) == [
        "1",
        "2",
    ]


def test_given_version_and_bad_input(trained_project, crime_csv):
    client = _client()
    before = len(_monitoring_runs(client))
    outcome = _monitor(crime_csv, version="1")
    assert outcome.model_version == "1"
    assert client.get_model_version(MODEL, "1").tags[monitor.LAST_RUN_TAG] == outcome.monitor_run_id
    assert len(_monitoring_runs(client)) == before + 1

    partial = trained_project / "partial.csv"
    load_crime().drop(columns=["Rape", "Density"]).to_csv(partial, index=False)
    with pytest.raises(DataError, match=r"partial\.csv: missing feature column\(s\) Rape, Density"):
        _monitor(partial)
    short = trained_project / "short.csv"
    load_crime().head(10).to_csv(short, index=False)
    with pytest.raises(DataError, match=r"10 row\(s\); monitoring needs at least"):
        _monitor(short)
    assert len(_monitoring_runs(client)) == before + 1  # bad input: no monitoring run

    client.delete_registered_model_alias(MODEL, "champion")
    with pytest.raises(RegistryError, match="has no champion"):
        _monitor(crime_csv)
    with pytest.raises(RegistryError, match="has no version 9"):
        _monitor(crime_csv, version="9")


def test_retrain_on_drift_registers_a_new_version(drifted_csv, crime_csv):
    quiet = _monitor(crime_csv, retrain=True, overrides=RETRAIN_FAST)
    assert quiet.retrain == {"triggered": False, "reason": "no drift: nothing to retrain"}

    outcome = _monitor(drifted_csv, retrain=True, overrides=RETRAIN_FAST)
    assert outcome.drift and outcome.retrain["triggered"]
    assert outcome.retrain["model_version"] == "3" and outcome.retrain["k"] == 4
    assert isinstance(outcome.retrain["promoted"], bool)
    client = _client()
    trained = client.get_run(outcome.retrain["run_id"])
    assert trained.data.tags["data_md5"] == md5_bytes(drifted_csv.read_bytes())
    run = client.get_run(outcome.monitor_run_id)
    assert run.data.tags["retrain_model_version"] == "3"
    artifact = json.loads(
        mlflow.artifacts.load_text(f"runs:/{outcome.monitor_run_id}/{monitor.ARTIFACT_PATH}")
    )
    assert artifact["retrain"]["model_version"] == "3" and artifact == outcome.to_json()


def test_capture_log_is_monitored_but_not_retrained(trained_project):
    frame = load_crime()
    frame["Murder"] *= 3
    frame["Assault"] += 200
    lines = []
    for start in range(0, 50, 10):  # five CSV requests of ten rows, as the endpoint captures
        body = frame[FEATURES].iloc[start : start + 10].to_csv(index=False, header=False)
        record = {
            "captureData": {
                "endpointInput": {
                    "observedContentType": "text/csv",
                    "mode": "INPUT",
                    "data": body,
                    "encoding": "CSV",
                }
            },
            "eventMetadata": {"status": 200, "endpointName": "popseg", "modelVersion": "2"},
        }
        lines.append(json.dumps(record))
    log = trained_project / "capture.jsonl"
    log.write_text("\n".join(lines) + "\n")
    outcome = _monitor(log, retrain=True, overrides=RETRAIN_FAST)
    assert outcome.data_kind == "capture" and outcome.report.n_rows == 50 and outcome.drift
    assert outcome.retrain["triggered"] is False
    assert "capture log" in outcome.retrain["reason"]
    versions = _client().search_model_versions(f"name='{MODEL}'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]


def test_failed_retraining_is_reported_not_raised(drifted_csv):
    # The new data fails the training validation suite (more rows than allowed): the drift is
    # still recorded, and the outcome carries the training error and its exit code.
    outcome = _monitor(drifted_csv, retrain=True, overrides=[*RETRAIN_FAST, "validate.max_rows=40"])
    assert outcome.drift and outcome.retrain["triggered"]
    assert outcome.retrain["exit_code"] == 4 and "validation" in outcome.retrain["error"]
    assert outcome.retrain_failed.exit_code == 4
    artifact = json.loads(
        mlflow.artifacts.load_text(f"runs:/{outcome.monitor_run_id}/{monitor.ARTIFACT_PATH}")
    )
    assert artifact["retrain"] == outcome.retrain
    versions = _client().search_model_versions(f"name='{MODEL}'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
