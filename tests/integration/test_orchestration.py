"""How the training flow runs under Prefect: cached steps, retries with backoff on the network
step only, and two runs at once against one MLflow store."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sqlite3
import stat
import sys
from pathlib import Path

import mlflow
import pytest

from tasks.config import load_params
from tasks.errors import DataError, SourceUnavailableError
from tests import processes

MODEL = "popseg-segmentation"
BIN = Path(sys.executable).parent


def _flow_state(*overrides, promote=False):
    from flows.training import training_flow

    params = load_params("params.yaml", list(overrides))
    return training_flow(params, promote, return_state=True)


def _task_runs(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )


def test_prepare_and_train_are_cached_on_data_hash_params_and_code(
    prefect_server, project_dir, monkeypatch
):
    from flows import result_codec

    # Every array in a file of its own, as a large input's are (the test data is small).
    monkeypatch.setattr(result_codec, "FILE_MIN_BYTES", 0)
    # Settings no other test uses: the cache is shared by the whole test session.
    fast = [
        "impute.strategy=mean",
        "evaluate.bootstrap_rounds=3",
        "cluster.k_max=7",
        "cluster.n_init=3",
    ]
    from prefect.settings import get_current_settings

    storage = Path(get_current_settings().results.local_storage_path)
    # Other tests' cached results share this folder: look only at the ones this test writes.
    earlier = set(storage.glob("popseg-*"))
    first = _flow_state(*fast).result()
    second = _flow_state(*fast).result()
    third = _flow_state(*fast, "cluster.k_min=3").result()
    uncached = _flow_state(*fast, "orchestrate.cache=false").result()
    client = mlflow.MlflowClient()
    tags = [client.get_run(o.run_id).data.tags for o in (first, second, third, uncached)]
    assert "cached_steps" not in tags[0]
    assert tags[1]["cached_steps"] == "prepare,train"
    # Another cluster setting: the prepared data is reused, the sweep is not.
    assert tags[2]["cached_steps"] == "prepare"
    assert "cached_steps" not in tags[3]
    # The cached result is the same model.
    assert second.k == first.k and second.metrics == first.metrics
    assert any("reused cached results of: prepare, train" in n for n in second.notes)
    assert third.k >= 3
    # Persisted as signed JSON + .npy files (flows/result_cache.py), never pickle; files 0600.
    entries = sorted(set(storage.glob("popseg-*")) - earlier)
    assert {entry.name.split("-")[1] for entry in entries} == {"prepare", "train"}
    files = {}
    for entry in entries:
        signature, _, record = entry.read_bytes().partition(b"\n")
        assert signature.startswith(b"popseg-cache 1 ")
        record = json.loads(record)
        assert record["metadata"]["serializer"] == {
            "type": "popseg-json",
            "arrays": str(storage / "arrays"),
        }
        assert stat.S_IMODE(entry.stat().st_mode) == 0o600
        result = record["result"].encode()  # the codec's JSON, a string in the record
        files[entry.name] = set(re.findall(rb'"file": ?"([0-9a-f]{64}[.]npy)"', result))
    assert stat.S_IMODE(storage.stat().st_mode) == 0o700
    for name in set().union(*files.values()):
        assert stat.S_IMODE((storage / "arrays" / name.decode()).stat().st_mode) == 0o600
    # A damaged array file of the cached prepare result: refused, prepare runs again (the
    # train entry, keyed on the data and settings, still serves), the same model comes out.
    (prepare_entry,) = (name for name in files if name.startswith("popseg-prepare-"))
    only_prepare = files[prepare_entry] - set().union(
        *(found for name, found in files.items() if name != prepare_entry)
    )
    damaged = storage / "arrays" / sorted(only_prepare)[0].decode()
    damaged.write_bytes(damaged.read_bytes()[:-8])
    rerun = _flow_state(*fast).result()
    assert client.get_run(rerun.run_id).data.tags["cached_steps"] == "train"
    assert rerun.k == first.k and rerun.metrics == first.metrics
    # The rerun wrote the file again, whole (prepare is deterministic: the same bytes).
    assert hashlib.sha256(damaged.read_bytes()).hexdigest() == damaged.stem


def test_network_step_retries_with_backoff_then_fails_clearly(
    prefect_server, project_dir, monkeypatch
):
    with socket.socket() as probe:  # a port nothing listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    state = _flow_state(
        "data.path=s3://popseg-data/in/small.csv",
        "orchestrate.retries=2",
        "orchestrate.retry_backoff_s=0.2",
    )
    assert state.is_failed()
    with pytest.raises(
        SourceUnavailableError, match="s3://popseg-data/in/small.csv: cannot reach S3"
    ):
        state.result()
    (ingest,) = [
        run for run in _task_runs(state.state_details.flow_run_id) if run.name.startswith("ingest")
    ]
    assert ingest.run_count == 3 and ingest.state.is_failed()
    # Bad input is not retried: one attempt, the file named.
    missing = _flow_state(f"data.path={project_dir / 'nope.csv'}", "orchestrate.retries=2")
    with pytest.raises(DataError, match="nope.csv: file not found"):
        missing.result()
    (ingest,) = [
        run
        for run in _task_runs(missing.state_details.flow_run_id)
        if run.name.startswith("ingest")
    ]
    assert ingest.run_count == 1
    from tasks.register import configure_mlflow

    configure_mlflow()
    assert not mlflow.MlflowClient().search_registered_models()


def test_two_runs_at_once_share_the_store_safely(prefect_server, project_dir, small_csv):
    """Two `popseg train` processes on one project: both register, the store stays sound, and
    champion moves once per promotion, the second gate comparing against the first winner."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    command = [
        str(BIN / "popseg"),
        "train",
        "--data",
        str(small_csv),
        "--json",
        "--set",
        "cluster.k_max=4",
        "--set",
        "evaluate.bootstrap_rounds=3",
        "--set",
        "promote.min_silhouette=0",
        "--set",
        "promote.min_stability=0",
    ]
    runs = [processes.start(command, project_dir, env) for _ in range(2)]
    results = [json.loads(out) for out in processes.outputs(runs, timeout=600, tail=3000)]
    assert sorted(r["model_version"] for r in results) == ["1", "2"]
    assert all(r["promoted"] for r in results)
    from tasks.register import configure_mlflow

    configure_mlflow()
    database = project_dir / "mlflow.db"
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    client = mlflow.MlflowClient()
    versions = sorted(str(v.version) for v in client.search_model_versions(f"name='{MODEL}'"))
    assert versions == ["1", "2"]
    parents = client.search_runs(
        [mlflow.get_experiment_by_name("popseg").experiment_id],
        filter_string="tags.data_md5 != ''",
    )
    finished = [
        run
        for run in parents
        if run.info.status == "FINISHED" and "mlflow.parentRunId" not in run.data.tags
    ]
    assert len(finished) == 2
    # The last promotion moved champion past the first winner (its gate compared against it);
    # the first winner replaced nobody. Without the lock both could replace "no champion".
    previous = {
        v: client.get_model_version(MODEL, v).tags.get("previous_champion") for v in ("1", "2")
    }
    champion = str(client.get_model_version_by_alias(MODEL, "champion").version)
    other = "1" if champion == "2" else "2"
    assert previous == {champion: other, other: None}
    gate = client.get_model_version(MODEL, champion).tags["gate_reasons"]
    assert "not worse than the champion on the same data" in gate
    assert (database.parent / "mlflow.db.lock").exists()
