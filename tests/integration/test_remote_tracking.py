"""Every command against a shared tracking server, configured only by
``MLFLOW_TRACKING_URI=http://...``: a real `mlflow server` (the `mlflow_server` fixture) whose
artifacts go through its proxy, as in team mode, and a project folder with no MLflow store of
its own. train -> promote -> lineage -> report -> monitor -> deploy -> rollback -> score through
the CLI; nothing MLflow-shaped may appear in the project folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from tasks.ingest import load_crime
from tasks.tracking.lock import LOCK_MODEL
from tests.e2e.helpers import invoke


def _json(result):
    assert result.exit_code == 0, result.stderr + result.stdout
    return json.loads(result.stdout)


def _local_stores(folder: Path) -> list[str]:
    names = ("mlflow.db", "mlflow.db.lock", "registry.lock", "mlartifacts", "mlruns")
    return sorted(str(p.relative_to(folder)) for n in names for p in folder.rglob(n))


@pytest.mark.slow  # two trainings, a local endpoint: ~2.5 min on 2 loaded cores
def test_every_command_on_a_tracking_server(
    prefect_server, project_dir, mlflow_server, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    # The session's server is shared: this test's own model and experiment names.
    model = f"remote-{uuid.uuid4().hex[:8]}"
    settings = yaml.safe_load((project_dir / "params.yaml").read_text())
    settings["register"].update(model_name=model, experiment=model)
    (project_dir / "params.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    fast = ["--set", "evaluate.bootstrap_rounds=5", "--set", "cluster.k_max=5"]
    relaxed = [
        "--set",
        "promote.max_silhouette_drop=1.0",
        "--set",
        "promote.min_silhouette=0",
        "--set",
        "promote.min_stability=0",
    ]

    load_crime().to_csv(project_dir / "rows.csv", index=False)
    data = ["--data", "rows.csv"]
    first = _json(invoke("train", *data, *fast, "--json"))
    assert first["model_version"] == "1" and first["promoted"] is True
    k4 = ["--set", "cluster.k_min=4", "--set", "cluster.k_max=4"]
    second = _json(invoke("train", *data, *fast[:2], *k4, *relaxed, "--json"))
    assert second["model_version"] == "2" and second["promoted"] is True
    client = mlflow.MlflowClient(mlflow_server, mlflow_server)
    assert client.get_model_version_by_alias(model, "champion").version == "2"
    assert client.get_model_version(model, "2").tags["previous_champion"] == "1"
    run = client.get_run(second["run_id"])
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # through the server's proxy
    assert not any(m.name == LOCK_MODEL for m in client.search_registered_models())

    again = _json(invoke("promote", "--version", "1", *relaxed, "--json"))
    assert again["model_version"] == "1" and again["previous_champion"] == "2"
    assert client.get_model_version_by_alias(model, "champion").version == "1"
    back = _json(invoke("promote", "--version", "2", *relaxed, "--json"))
    assert back["promoted"] is True

    lineage = _json(invoke("lineage", "1", "--json"))
    assert lineage["model_version"] == "1" and lineage["run_id"] == first["run_id"]
    assert lineage["data_md5"]

    report = _json(invoke("report", "--output", "report.html", "--json"))
    page = (project_dir / "report.html").read_text()
    assert report["model_version"] == "2" and mlflow_server in page and "<img" in page

    drifted = load_crime()
    drifted["Murder"] *= 3
    drifted.to_csv(project_dir / "drifted.csv", index=False)
    monitored = _json(invoke("monitor", "--data", "drifted.csv", "--json"))
    assert monitored["drift"] is True and monitored["model_version"] == "2"
    assert client.get_run(monitored["monitor_run_id"]).info.status == "FINISHED"

    endpoint = f"remote-{uuid.uuid4().hex[:6]}"
    try:
        first_deploy = invoke("deploy", "-n", endpoint, "--model-version", "1", "--json")
        assert _json(first_deploy)["model_version"] == "1"
        deployed = _json(invoke("deploy", "-n", endpoint, "--json"))  # the champion
        assert deployed["model_version"] == "2" and deployed["action"] == "updated"
        rolled = _json(invoke("rollback", endpoint, "--json"))
        assert rolled["model_version"] == "1" and rolled["champion"] == "1"
        assert client.get_model_version_by_alias(model, "champion").version == "1"
    finally:
        invoke("undeploy", endpoint)

    scored = _json(invoke("score", "--data", "rows.csv", "-o", "scored.csv", "--json"))
    assert scored["model_version"] == "1"
    table = pd.read_csv(project_dir / "scored.csv")
    assert len(table) == 50 and table["segment"].between(0, 4).all()

    assert _local_stores(project_dir) == []


def test_ui_prints_the_servers_url(mlflow_server, tmp_path):
    """With an http store there is nothing to start: `popseg ui` names the server's UI, on the
    training experiment's runs table once the server knows that experiment."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    experiment = f"ui-{uuid.uuid4().hex[:8]}"
    (tmp_path / "params.yaml").write_text(f"register:\n  experiment: {experiment}\n")

    def popseg_ui() -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(Path(sys.executable).with_name("popseg")), "ui"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    result = popseg_ui()  # no such experiment on the server yet: its address
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == mlflow_server
    experiment_id = mlflow.MlflowClient(mlflow_server).create_experiment(experiment)
    result = popseg_ui()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"{mlflow_server}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    )
    assert "tracking server, which already serves the MLflow UI" in result.stderr
    assert _local_stores(tmp_path) == []
