"""The whole training flow on bundled data, in a temporary MLflow store, on Prefect's test server."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest

from tasks.chain import SegmentationChain
from tasks.config import load_params
from tasks.errors import DataError, DataValidationError

MODEL = "popseg-segmentation"


def _train(*overrides, promote=True):
    from flows.training import training_flow

    params = load_params("params.yaml", ["evaluate.bootstrap_rounds=5", *overrides])
    return training_flow(params, promote)


def _client():
    return mlflow.MlflowClient()


def _assignments(client, run_id):
    path = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="reports/assignments.csv"
    )
    return pd.read_csv(path, index_col=0)


def _segments_report(client, run_id):
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="reports/segments.json")
    return json.loads(open(path).read())


@pytest.fixture
def trained(prefect_server, project_dir):
    return _train()


def test_crime_run_records_everything(trained, project_dir):
    outcome = trained
    assert outcome.model_version == "1" and outcome.promoted
    assert 2 <= outcome.k <= 12
    assert sum(outcome.sizes.values()) == 50
    client = _client()
    run = client.get_run(outcome.run_id)
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    raw = (project_dir / "data" / "raw" / "crime.csv").read_bytes()
    import hashlib

    assert tags["data_md5"] == hashlib.md5(raw).hexdigest()
    assert tags["git_commit"]  # a sha, or "unknown" outside a git checkout
    assert tags["validation_success"] == "true"
    assert params["cluster.k_max"] == "12" and params["reduce.n_components"] == "0.8"
    assert metrics["k"] == outcome.k
    assert metrics["silhouette"] == pytest.approx(outcome.metrics["silhouette"])
    assert metrics["inertia"] > 0
    # One nested run per k with its metrics.
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{outcome.run_id}'"
    )
    assert sorted(int(c.data.params["k"]) for c in children) == list(range(2, 13))
    assert all("silhouette" in c.data.metrics and "dunn" in c.data.metrics for c in children)
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id, "plots")}
    for name in (
        "elbow_inertia_by_k",
        "silhouette_by_k",
        "pca_explained_variance",
        "centroid_heatmap",
        "cluster_sizes",
        "pca_component_makeup",
    ):
        assert f"plots/{name}.png" in artifacts
    validation = client.list_artifacts(outcome.run_id, "validation")
    assert [a.path for a in validation] == ["validation/validation_result.json"]
    assignments = pd.read_csv(
        mlflow.artifacts.download_artifacts(
            run_id=outcome.run_id, artifact_path="reports/assignments.csv"
        )
    )
    assert list(assignments.columns) == ["State", "segment", "distance_to_cluster"]
    assert len(assignments) == 50 and assignments["State"].iloc[0] == "Alabama"
    assert assignments["segment"].value_counts().to_dict() == outcome.sizes
    selection = json.loads(
        mlflow.artifacts.load_text(f"runs:/{outcome.run_id}/reports/selection.json")
    )
    assert selection["k"] == outcome.k and selection["reason"] == outcome.selection_reason
    # The default criterion finds no stable cluster structure in the 50 states (prediction
    # strength below 0.8 at every k): it says k=1 and the model keeps the smallest k.
    assert selection["criterion"] == "gated_vote"
    assert selection["structure_found"] is False and selection["chosen_k"] == 1
    assert outcome.k == 2 and "no cluster structure found (k=1)" in outcome.selection_reason
    # Registered with both aliases; version tags carry the lineage.
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert str(version.version) == "1"
    assert str(client.get_model_version_by_alias(MODEL, "challenger").version) == "1"
    assert version.tags["data_md5"] == tags["data_md5"]


def test_pyfunc_and_chain_reproduce_training_labels(trained, project_dir):
    outcome = trained
    frame = pd.read_csv(project_dir / "data" / "raw" / "crime.csv")
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    # The input schema declares every feature a double; MLflow refuses int64 columns.
    predictions = model.predict(frame.drop(columns="State").astype(float))
    assert list(predictions.columns) == ["closest_cluster", "distance_to_cluster"]
    sizes = predictions["closest_cluster"].value_counts().to_dict()
    assert sizes == outcome.sizes
    local = mlflow.artifacts.download_artifacts(run_id=outcome.run_id, artifact_path="chain")
    chain = SegmentationChain.load(local)
    segments, distances = chain.predict(frame.drop(columns="State").to_numpy(float))
    np.testing.assert_array_equal(segments, predictions["closest_cluster"].to_numpy())
    np.testing.assert_allclose(distances, predictions["distance_to_cluster"].to_numpy())
    # The model is logged from code: no pickle in the model directory.
    model_dir = mlflow.artifacts.download_artifacts(f"models:/{MODEL}/1")
    import pathlib

    assert not list(pathlib.Path(model_dir).rglob("*.pkl"))


def test_second_run_is_gated_against_the_champion(trained, project_dir):
    # Its data (crime, ~5.8 kB as Parquet) above register.log_data_max_mb: the run logs a
    # seeded sample of its rows and the gate re-scores both models on it (it used to fail
    # with "run ... has no logged training data" once a champion existed).
    second = _train("cluster.seed=1", "register.log_data_max_mb=0.0055")
    assert second.model_version == "2"
    assert any("champion on the same data" in r for r in second.gate_reasons)
    second_tags = _client().get_run(second.run_id).data.tags
    assert second_tags["training_data_logged"] == "sample"
    assert 10 < int(second_tags["training_data_rows"]) < 50
    # Stable ids: another seed on the same population finds (nearly) the same clusters,
    # renumbered to the champion's ids, so rows keep their segment; mapping and cost logged.
    client = _client()
    first_rows = _assignments(client, trained.run_id)
    second_rows = _assignments(client, second.run_id)
    assert second.k == trained.k
    kept = float((second_rows["segment"] == first_rows["segment"]).mean())
    mapping = _segments_report(client, second.run_id)["id_mapping"]
    assert mapping["method"].startswith("hungarian on centroid distance")
    assert mapping["champion_version"] == "1"
    assert mapping["rows_keeping_segment"] == pytest.approx(kept) and kept >= 0.95
    assert client.get_run(second.run_id).data.metrics["segment_match_cost"] == pytest.approx(
        mapping["match_cost"]
    )
    # A threshold nobody meets: the gate fails and the champion stays put.
    third = _train("promote.min_silhouette=0.99")
    assert not third.promoted
    assert any("< promote.min_silhouette 0.99" in r for r in third.gate_reasons)
    champion = str(client.get_model_version_by_alias(MODEL, "champion").version)
    assert champion in ("1", "2") and champion != "3"
    assert str(client.get_model_version_by_alias(MODEL, "challenger").version) == "3"
    assert client.get_model_version(MODEL, "3").tags["gate_passed"] == "false"


def test_counties_with_skewed_counts(prefect_server, project_dir):
    outcome = _train("data.dataset=counties", "cluster.k_max=6")
    assert outcome.n_rows == 437
    assert any("dropping non-numeric column(s) state, category" in n for n in outcome.notes)
    scale_report = json.loads(
        mlflow.artifacts.load_text(f"runs:/{outcome.run_id}/reports/scale.json")
    )
    assert "poptotal" in scale_report["log1p_columns"]


def test_validation_failure_registers_nothing(prefect_server, project_dir):
    bad = project_dir / "bad.csv"
    rows = "\n".join(f"r{i},{i},5" for i in range(20))
    bad.write_text("name,x,constant\n" + rows + "\n")
    with pytest.raises(DataValidationError, match="column 'constant': expect_column_stdev"):
        _train(f"data.path={bad}")
    client = _client()
    assert client.search_registered_models() == []
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    failed = client.search_runs(experiment_ids)
    assert [r.info.status for r in failed] == ["FAILED"]
    assert failed[0].data.tags["validation_success"] == "false"


def test_bad_file_fails_before_anything_is_logged(prefect_server, project_dir):
    empty = project_dir / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.csv: the file is empty"):
        _train(f"data.path={empty}")
    assert _client().search_registered_models() == []


def test_s3_source_through_moto(prefect_server, project_dir, small_csv, moto_s3):
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="popseg-data")
    s3.upload_file(str(small_csv), "popseg-data", "in/small.csv")
    outcome = _train(
        "data.path=s3://popseg-data/in/small.csv", "cluster.k_max=4", "data.min_rows=10"
    )
    assert outcome.data_source == "s3://popseg-data/in/small.csv"
    assert outcome.k == 2 and sorted(outcome.sizes.values()) == [15, 15]
    import hashlib

    assert outcome.data_md5 == hashlib.md5(small_csv.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="no such object in S3"):
        _train("data.path=s3://popseg-data/in/missing.csv")
