"""Scheduled retraining: which deployments `popseg serve` runs, prefect.yaml kept in step with
params.yaml, the retrain flow (monitor -> train -> gate -> deploy), and a real schedule firing
on a local Prefect server that `popseg serve` starts and stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tasks.config import load_params
from tasks.errors import ConfigError
from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def test_prefect_yaml_is_generated_from_params_yaml():
    from flows.schedules import prefect_yaml

    committed = (ROOT / "prefect.yaml").read_text()
    assert committed == prefect_yaml(load_params(ROOT / "params.yaml")), (
        "prefect.yaml is out of date with params.yaml: run `popseg serve --write-prefect-yaml`"
    )
    import yaml

    spec = yaml.safe_load(committed)
    crons = {d["name"]: d["schedules"][0]["cron"] for d in spec["deployments"]}
    params = load_params(ROOT / "params.yaml")
    assert crons == {
        "train": params.schedule.train,
        "retrain": params.schedule.retrain,
        "monitor": params.schedule.monitor,
    }
    for deployment in spec["deployments"]:
        module, function = deployment["entrypoint"].split(":")
        assert (ROOT / module).exists() and f"def {function}(" in (ROOT / module).read_text()


def test_which_deployments_are_served():
    from flows.schedules import schedules

    params = load_params(ROOT / "params.yaml")
    # No new data configured: monitor and retrain are left out.
    assert [s.name for s in schedules(params)] == ["train"]
    planned = schedules(params, data_path="new.csv")
    assert [(s.name, s.cron) for s in planned] == [
        ("train", "0 3 * * 1"),
        ("retrain", "0 4 * * *"),
        ("monitor", "0 * * * *"),
    ]
    every = schedules(params, only=["monitor"], every_s=5, data_path="new.csv")
    assert [(s.name, s.cron, s.interval_s) for s in every] == [("monitor", None, 5)]
    with pytest.raises(ConfigError, match="schedule.monitor_data: not set"):
        schedules(params, only=["monitor"])
    with pytest.raises(ConfigError, match="--only nightly: choose from train, retrain, monitor"):
        schedules(params, only=["nightly"])
    off = load_params(ROOT / "params.yaml", ["schedule.train=null"])
    with pytest.raises(ConfigError, match="every cron is null"):
        schedules(off)


def test_retrain_flow_deploys_only_after_drift_and_a_passed_gate(trained_project):
    from flows.schedules import scheduled_retrain

    relaxed = [
        "promote.min_silhouette=0",
        "promote.min_stability=0",
        "promote.max_silhouette_drop=1.0",
        "evaluate.bootstrap_rounds=3",
        "cluster.k_max=5",
        "deploy.endpoint_name=popseg-retrain-test",
    ]
    crime = trained_project / "data" / "raw" / "crime.csv"
    calm = scheduled_retrain("params.yaml", str(crime), relaxed)
    assert calm["monitor"]["drift"] is False and calm["deploy"] is None
    assert calm["monitor"]["retrain"] == {
        "triggered": False,
        "reason": "no drift: nothing to retrain",
    }

    frame = pd.read_csv(crime)
    frame["Murder"] *= 3
    frame["Assault"] += 200
    drifted = trained_project / "drifted.csv"
    frame.to_csv(drifted, index=False)
    result = scheduled_retrain("params.yaml", str(drifted), relaxed)
    assert result["monitor"]["drift"] is True
    retrained = result["monitor"]["retrain"]
    assert retrained["triggered"] and retrained["promoted"]
    assert result["deploy"]["model_version"] == retrained["model_version"]
    from tasks.register import configure_mlflow

    configure_mlflow()
    champion = mlflow.MlflowClient().get_model_version_by_alias("popseg-segmentation", "champion")
    assert str(champion.version) == retrained["model_version"]


def _api(url: str, path: str, body: dict | None = None):
    request = urllib.request.Request(
        url.rstrip("/") + path,
        data=json.dumps(body or {}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_serve_starts_a_server_and_a_schedule_fires(trained_project):
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(trained_project / ".prefect")
    stderr_path = trained_project / "serve.err"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            [
                str(BIN / "popseg"),
                "serve",
                "--only",
                "monitor",
                "--every",
                "5",
                "--data",
                "data/raw/crime.csv",
                "--port",
                "0",
            ],
            cwd=trained_project,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        api = None
        completed: list = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(completed) < 2:
            assert process.poll() is None, stderr_path.read_text()[-3000:]
            text = stderr_path.read_text()
            if api is None and "Prefect API " in text:
                api = text.split("Prefect API ", 1)[1].split()[0]
            if api:
                finished = _api(
                    api,
                    "/flow_runs/filter",
                    {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}},
                )
                # Scheduled runs of the deployment (their monitor subflows have none).
                completed = [run for run in finished if run["deployment_id"]]
            time.sleep(1)
        assert api and "(started here)" in stderr_path.read_text()
        assert len(completed) >= 2, stderr_path.read_text()[-3000:]
        assert len({run["deployment_id"] for run in completed}) == 1
        from tasks.register import configure_mlflow

        configure_mlflow()
        runs = mlflow.search_runs(
            experiment_names=["popseg-segmentation-monitoring"],
            filter_string="tags.`popseg.run_type` = 'monitor'",
        )
        assert len(runs) >= 2
        reasons = [
            json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/monitor/monitor.json"))[
                "reasons"
            ]
            for run_id in runs["run_id"]
        ]
        assert set(runs["tags.drift"]) == {"false"}, reasons
    finally:
        process.send_signal(signal.SIGINT)
        returncode = process.wait(timeout=90)
    assert returncode == 0, stderr_path.read_text()[-3000:]
    assert "stopped" in stderr_path.read_text()
    # The server popseg started is gone with it.
    with pytest.raises(OSError):
        urllib.request.urlopen(api.rstrip("/") + "/health", timeout=2)
