"""The deploy commands of the `popseg` CLI: package, deploy, endpoints, rollback, undeploy,
score, and the main job's serving step; in-process (Typer's runner) on a trained project, and
`popseg run` as a real process (slow)."""

from __future__ import annotations

import json
import tarfile

import mlflow
import numpy as np
import pandas as pd
import pytest

from tests.e2e.helpers import invoke, run_popseg

MODEL = "popseg-segmentation"


def _json(result):
    assert result.exit_code == 0, result.stderr + result.stdout
    return json.loads(result.stdout)


def test_package_deploy_endpoints_rollback_undeploy(trained_project):
    package = _json(invoke("package", "--output", "dist", "--json"))
    assert package["model_version"] == "2" and package["package"] == "dist/model.tar.gz"
    with tarfile.open(trained_project / "dist/model.tar.gz") as archive:
        assert sorted(archive.getnames()) == [
            "chain.json",
            "chain.npz",
            "code/chain.py",
            "code/inference.py",
        ]

    first = _json(invoke("deploy", "--endpoint-name", "demo", "--model-version", "1", "--json"))
    assert {k: first[k] for k in ("endpoint_name", "model_name", "model_version", "target")} == {
        "endpoint_name": "demo",
        "model_name": MODEL,
        "model_version": "1",
        "target": "local",
    }
    assert first["endpoint_url"].startswith("http://127.0.0.1:")
    second = _json(invoke("deploy", "--endpoint-name", "demo", "--json"))  # champion: 2
    assert second["action"] == "updated" and second["model_version"] == "2"
    assert second["endpoint_url"] == first["endpoint_url"]

    listed = _json(invoke("endpoints", "--json"))["endpoints"]
    assert [(e["name"], e["status"], e["model_version"]) for e in listed] == [
        ("demo", "running", "2")
    ]
    assert "token" not in listed[0]
    text = invoke("endpoints")
    assert "demo" in text.stdout and "v2" in text.stdout and "running" in text.stdout

    rolled = _json(invoke("rollback", "demo", "--json"))
    assert rolled["model_version"] == "1" and rolled["champion"] == "1"
    assert str(mlflow.MlflowClient().get_model_version_by_alias(MODEL, "champion").version) == "1"

    gone = invoke("undeploy", "demo")
    assert gone.exit_code == 0 and "removed" in gone.stdout
    assert _json(invoke("endpoints", "--json")) == {"endpoints": []}


def test_deploy_errors_are_clear(trained_project, monkeypatch):
    monkeypatch.delenv("POPSEG_SAGEMAKER_ROLE_ARN", raising=False)
    missing = invoke("deploy", "--model-version", "7")
    assert missing.exit_code == 5 and "has no version 7" in missing.stderr
    unknown = invoke("undeploy", "nope")
    assert unknown.exit_code == 8 and "no local endpoint named 'nope'" in unknown.stderr
    no_role = invoke("deploy", "--target", "sagemaker", "--region", "us-east-1", "--bucket", "b")
    assert no_role.exit_code == 7 and "needs an execution role" in no_role.stderr
    bad_target = invoke("deploy", "--target", "k8s")
    assert bad_target.exit_code == 2 and "choose local or sagemaker" in bad_target.stderr
    nothing = invoke("rollback", "nope")
    assert nothing.exit_code == 8
    for result in (missing, unknown, no_role, bad_target, nothing):
        assert "Traceback" not in result.stderr + result.stdout


def test_score_writes_id_segment_distance(trained_project):
    data = trained_project / "data" / "raw" / "crime.csv"
    result = _json(invoke("score", "--data", str(data), "--output", "scores.csv", "--json"))
    assert result["rows"] == 50 and result["model_version"] == "2"
    scores = pd.read_csv(trained_project / "scores.csv")
    assert list(scores.columns) == ["State", "segment", "distance_to_cluster"]
    run_id = mlflow.MlflowClient().get_model_version(MODEL, "2").run_id
    assignments = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="reports/assignments.csv")
    )
    assert scores["segment"].tolist() == assignments["segment"].tolist()
    # Missing columns are named.
    (trained_project / "partial.csv").write_text("State,Murder\nA,1\nB,2\n")
    bad = invoke("score", "--data", "partial.csv", "--output", "x.csv")
    assert bad.exit_code == 3 and "partial.csv: missing feature column(s) Assault" in bad.stderr


def test_score_dask_engine_writes_the_in_memory_scores(trained_project):
    """`score --engine dask` on a folder of Parquet parts (a LocalCluster of one thread worker,
    as params.yaml sets it) writes one part per input part, equal to the in-memory scores."""
    params = trained_project / "params.yaml"
    text = params.read_text().replace("  processes: true", "  processes: false")
    params.write_text(text.replace("  n_workers: null ", "  n_workers: 1    "))
    crime = pd.read_csv(trained_project / "data" / "raw" / "crime.csv")
    (trained_project / "parts").mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(crime)), 3)):
        crime.iloc[rows].to_parquet(trained_project / f"parts/part-{i}.parquet", index=False)
    memory = _json(
        invoke("score", "--data", "data/raw/crime.csv", "--output", "scores.csv", "--json")
    )
    dask = _json(
        invoke("score", "--data", "parts", "--engine", "dask", "--output", "scored", "--json")
    )
    assert (dask["engine"], dask["rows"], dask["parts"]) == ("dask", 50, 3)
    assert dask["model_version"] == memory["model_version"] == "2"
    assert dask["segments"] == memory["segments"]
    expected = pd.read_csv(trained_project / "scores.csv")
    parts = sorted((trained_project / "scored").iterdir())
    assert [p.name for p in parts] == [f"part-0000{i}.parquet" for i in range(3)]
    scores = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    assert list(scores.columns) == ["State", "segment", "distance_to_cluster"]
    assert scores["State"].tolist() == expected["State"].tolist()
    assert scores["segment"].tolist() == expected["segment"].tolist()
    np.testing.assert_allclose(
        scores["distance_to_cluster"], expected["distance_to_cluster"], rtol=1e-9
    )
    wrong = invoke("score", "--data", "parts", "--output", "x.csv", "--scheduler", "tcp://h:1")
    assert wrong.exit_code == 2 and "--scheduler needs --engine dask" in wrong.stderr
    missing = invoke("score", "--data", "nope", "--engine", "dask", "--output", "x")
    assert missing.exit_code == 3 and "nope: file not found" in missing.stderr
    assert not (trained_project / "x").exists()


def test_run_serving_step_answers_like_training(trained_project):
    """The main job's last step (in-process): champion on a local endpoint, the first training
    rows through SageMaker's runtime call, the endpoint stopped."""
    from flows.commands import serve_sample
    from tasks.config import load_params

    payload = serve_sample(load_params("params.yaml"), keep_serving=False)
    assert payload["deployed"] and payload["model_version"] == "2" and payload["stopped"]
    run_id = mlflow.MlflowClient().get_model_version(MODEL, "2").run_id
    assignments = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="reports/assignments.csv")
    ).head(5)
    assert [s["id"] for s in payload["sample"]] == assignments["State"].tolist()
    assert [s["closest_cluster"] for s in payload["sample"]] == assignments["segment"].tolist()
    assert not (trained_project / ".popseg/endpoints/popseg.json").exists()


@pytest.mark.slow
def test_popseg_run_deploys_answers_and_keeps_serving_on_request(project_dir):
    result = run_popseg(["run", "--keep-serving", "--json"], project_dir)
    try:
        assert result.returncode == 0, result.stderr[-3000:]
        payload = json.loads(result.stdout)
        endpoint = payload["endpoint"]
        assert endpoint["deployed"] and endpoint["model_version"] == payload["model_version"]
        assert endpoint["smoke_test"]["passed"] and not endpoint["stopped"]
        assert [s["id"] for s in endpoint["sample"]] == [
            "Alabama",
            "Alaska",
            "Arizona",
            "Arkansas",
            "California",
        ]
        listed = json.loads(run_popseg(["endpoints", "--json"], project_dir).stdout)["endpoints"]
        assert [(e["name"], e["status"]) for e in listed] == [("popseg", "running")]
    finally:
        stopped = run_popseg(["undeploy", "popseg"], project_dir)
    assert stopped.returncode == 0, stopped.stderr
    summary = run_popseg(["run", "--set", "cluster.k_max=5"], project_dir)
    assert summary.returncode == 0, summary.stderr[-3000:]
    assert "answers through SageMaker's runtime call (invoke_endpoint)" in summary.stdout
    assert "endpoint stopped" in summary.stdout
    assert not (project_dir / ".popseg/endpoints/popseg.json").exists()
