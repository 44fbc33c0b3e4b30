"""The training flow on the Dask engine (a LocalCluster of 2 workers x 1 thread), against the
in-memory engine on the same seeded data; an s3:// Parquet source on moto; a worker killed
mid-fit; cluster errors that register nothing."""

from __future__ import annotations

import json
import logging
import os
import signal

import mlflow
import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linear_sum_assignment

from tasks.chain import SegmentationChain
from tasks.config import load_params
from tasks.errors import ConfigError, DistributedError, PopsegError

MODEL = "popseg-segmentation"
# 2 workers x 1 thread as threads of the test process (fast to start); ~20k seeded rows cut
# into several partitions; a sample smaller than the data, so the fit is refined on all rows.
DASK = [
    "dask.processes=false",
    "dask.n_workers=2",
    "dask.threads_per_worker=1",
    "dask.blocksize=512KiB",
    "dask.sample_rows=5000",
]
SYNTHETIC = [
    "data.dataset=synthetic",
    "data.synthetic_rows=20000",
    "cluster.k_max=8",
    "evaluate.bootstrap_rounds=4",
    "orchestrate.cache=false",
]


def _params(*overrides):
    return load_params("params.yaml", [*SYNTHETIC, *DASK, *overrides])


def _run(engine, *overrides, promote=True):
    from flows.training import run_training

    return run_training(_params(*overrides), promote, engine)


def _chain(run_id) -> SegmentationChain:
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="chain")
    return SegmentationChain.load(local)


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows in the same segment once segment ids are matched (Hungarian)."""
    k = int(max(a.max(), b.max())) + 1
    overlap = np.zeros((k, k))
    np.add.at(overlap, (a, b), 1)
    rows, columns = linear_sum_assignment(-overlap)
    return float(overlap[rows, columns].sum() / len(a))


def _no_model_registered():
    from tasks.register import configure_mlflow

    configure_mlflow()  # this test's store (MLFLOW_TRACKING_URI), not the last one used
    client = mlflow.MlflowClient()
    assert client.search_registered_models() == []
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments) if experiments else []
    assert all(run.info.status != "FINISHED" for run in runs)


def test_dask_engine_matches_in_memory(prefect_server, project_dir):
    memory = _run("memory")
    dask = _run("dask")
    assert dask.n_rows == memory.n_rows == 20000
    assert dask.data_md5 == memory.data_md5
    assert dask.k == memory.k
    assert dask.metrics["inertia"] == pytest.approx(memory.metrics["inertia"], rel=0.01)
    frame = pd.read_csv(project_dir / "data" / "raw" / "synthetic.csv")
    rows = frame.drop(columns="entity_id").to_numpy(dtype=float)
    ours, _ = _chain(dask.run_id).predict(rows)
    theirs, _ = _chain(memory.run_id).predict(rows)
    assert _agreement(ours, theirs) >= 0.99
    # Sizes and profiles are over all rows; the registered model is the same serving chain.
    assert sum(dask.sizes.values()) == 20000
    assert sorted(dask.sizes.values()) == sorted(memory.sizes.values())
    client = mlflow.MlflowClient()
    version = client.get_model_version(MODEL, dask.model_version)
    assert version.run_id == dask.run_id
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{dask.model_version}")
    predicted = model.predict(frame.drop(columns="entity_id").head(50))
    np.testing.assert_array_equal(predicted["closest_cluster"].to_numpy(), ours[:50])
    run = client.get_run(dask.run_id)
    assert run.data.tags["execution_engine"] == "dask"
    assert int(run.data.tags["dask_partitions"]) > 1
    assert run.data.tags["dask_sample_rows"] == "5000"
    # The same MLflow layout as in memory: the whole data set as the run's dataset input, the
    # gate's decision as the version's description.
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "synthetic"
    assert dataset_input.dataset.digest == dask.data_md5 == run.data.tags["data_md5"]
    raw = (project_dir / "data" / "raw" / "synthetic.csv").resolve()
    assert json.loads(dataset_input.dataset.source) == {"uri": str(raw)}
    verdict = "passed" if dask.promoted else "refused"
    assert version.description.startswith(f"Promotion gate {verdict}:\n- ")
    # What was sampled is stated in the run's notes.
    notes = json.loads(mlflow.artifacts.load_text(f"runs:/{dask.run_id}/reports/notes.json"))
    assert any("silhouette and Dunn index on a seeded sample of 5000" in n for n in notes)
    assert any("bootstrap stability" in n and "seeded sample" in n for n in notes)
    assignments = pd.read_csv(
        mlflow.artifacts.download_artifacts(
            run_id=dask.run_id, artifact_path="reports/assignments.csv"
        )
    )
    assert len(assignments) == 5000  # the sample's rows
    # The second model was gated against the first (the champion) on the same data.
    assert any("champion on the same data" in reason for reason in dask.gate_reasons)


def test_s3_parquet_dataset_through_moto(prefect_server, project_dir, moto_s3):
    import boto3

    from tasks.ingest import make_synthetic

    frame = make_synthetic(6000, 5, 3, 0.01, seed=1)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="popseg-big")
    for index, part in enumerate(np.array_split(np.arange(len(frame)), 3)):
        path = project_dir / f"part-{index}.parquet"
        frame.iloc[part].to_parquet(path, index=False)
        s3.upload_file(str(path), "popseg-big", f"population/part-{index}.parquet")
    source = "s3://popseg-big/population/"
    outcome = _run("dask", f"data.path={source}", "cluster.k_max=5", "dask.sample_rows=2000")
    assert outcome.data_source == source and outcome.n_rows == 6000
    assert outcome.k == 3 and sum(outcome.sizes.values()) == 6000
    assert len(outcome.data_md5) == 32
    assert any("read in place" in note for note in outcome.notes)
    with pytest.raises(PopsegError, match="popseg-big/missing/: no such object in S3"):
        _run("dask", "data.path=s3://popseg-big/missing/")


def test_unreachable_scheduler_is_a_clear_error(prefect_server, project_dir):
    from typer.testing import CliRunner

    from flows.cli import app

    with pytest.raises(DistributedError, match=r"cannot reach the Dask scheduler at tcp://127"):
        _run("dask", "dask.scheduler=tcp://127.0.0.1:9", "dask.connect_timeout_s=1")
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            "whatever.csv",
            "--engine",
            "dask",
            "--scheduler",
            "tcp://127.0.0.1:9",
            "--set",
            "dask.connect_timeout_s=1",
        ],
    )
    assert result.exit_code == DistributedError.exit_code
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in result.output
    _no_model_registered()


def test_unsupported_imputation_names_the_key(prefect_server, project_dir):
    with pytest.raises(ConfigError, match="impute.strategy=knn needs every row in one place"):
        _run("dask", "impute.strategy=knn")
    _no_model_registered()


def test_cluster_failure_mid_fit_registers_nothing(prefect_server, project_dir, monkeypatch):
    """A step that fails on the cluster (here: the third Lloyd iteration) fails the flow with
    the DistributedError and leaves MLflow without a model or a finished run."""
    from tasks.dask_engine import kmeans

    real = kmeans.DaskSession.compute
    calls = {"n": 0}

    def failing(self, step, tasks, source=None):
        if step.startswith("k-means iteration"):
            calls["n"] += 1
            if calls["n"] == 3:
                raise self._translate(OSError("connection to the worker was lost"), step, source)
        return real(self, step, tasks, source)

    monkeypatch.setattr(kmeans.DaskSession, "compute", failing)
    with pytest.raises(DistributedError, match="k-means iteration 3 failed on the Dask cluster"):
        _run("dask")
    _no_model_registered()


@pytest.mark.slow
def test_worker_killed_mid_fit(prefect_server, project_dir, caplog):
    """A worker process killed after the first Lloyd iteration (its partitions of prepared
    rows lost with it): the fit completes with the in-memory answer, or fails with a
    PopsegError and nothing registered."""
    from tasks.dask_engine.session import current

    killed = []

    class KillAfterFirstIteration(logging.Handler):
        def emit(self, record):
            if killed or not record.getMessage().startswith("k-means iteration 1:"):
                return
            pids = current().client.run(os.getpid)
            address, pid = sorted(pids.items())[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(address)

    # kmeans.lloyd logs each iteration's shifts at debug level (progress has its own lines)
    handler = KillAfterFirstIteration(level=logging.DEBUG)
    watched = logging.getLogger("tasks.dask_engine.kmeans")
    caplog.set_level(logging.DEBUG, logger="tasks.dask_engine.kmeans")
    watched.addHandler(handler)
    try:
        outcome = _run(
            "dask",
            "dask.processes=true",
            "dask.persist=always",
            "dask.memory_limit=1GB",
            "dask.prefect_tasks=false",
        )
    except PopsegError as error:
        assert killed, f"failed before the kill: {error}"
        _no_model_registered()
        return
    finally:
        watched.removeHandler(handler)
    assert killed, "the fit finished before a worker could be killed"
    reference = _run("memory")
    assert outcome.k == reference.k
    assert outcome.metrics["inertia"] == pytest.approx(reference.metrics["inertia"], rel=0.01)
    assert outcome.model_version == "1"
