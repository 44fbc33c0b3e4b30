"""Shared fixtures. Prefect's test server starts once per session (only for tests that use
it); every MLflow test gets its own sqlite store in a temporary project directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# Before Prefect is imported anywhere: keep its state out of $HOME, no analytics.
_SESSION_HOME = tempfile.mkdtemp(prefix="popseg-tests-")
os.environ.setdefault("PREFECT_HOME", str(Path(_SESSION_HOME) / "prefect"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
os.environ["GX_ANALYTICS_ENABLED"] = "false"
# Each command starts and stops its own Prefect server: the suite leaves no kept server behind
# (tests of the kept server opt in, in their own project folder).
os.environ.setdefault("POPSEG_PREFECT_SERVER", "per-command")
# Each command runs in its own process, as before the warm runner: a test never reaches a
# runner another test started (its tests opt in, in their own project folders).
os.environ.setdefault("POPSEG_WARM_RUNNER", "off")
os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
# scikit-learn's estimator checks include the array-API input check (numpy namespace) only
# when SciPy's array API support is on; it is read when scipy is first imported.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """The CLI's callback points the root logger at the current sys.stderr; under Typer's
    CliRunner that is a buffer closed after the call. Restore the handlers after each test so
    later in-process flows do not log to a closed stream."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _forget_mlflow_uris() -> None:
    """MLflow keeps the last tracking/registry URI in module globals (and copies them into
    os.environ); drop them so each test's MLFLOW_TRACKING_URI (set by `project_dir`) is what
    a bare `mlflow.MlflowClient()` uses."""
    import sys

    if "mlflow" not in sys.modules:
        return
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils

    mlflow.set_tracking_uri(None)
    registry_utils._registry_uri = None
    os.environ.pop("MLFLOW_REGISTRY_URI", None)


@pytest.fixture(autouse=True)
def _fresh_mlflow_uris():
    _forget_mlflow_uris()
    yield
    _forget_mlflow_uris()


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server for the whole session (~10 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def project_dir(tmp_path, monkeypatch):
    """A temporary project: params.yaml copied in, cwd set, its own MLflow sqlite store."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


@pytest.fixture
def params():
    from tasks.config import load_params

    return load_params(ROOT / "params.yaml")


@pytest.fixture
def blobs():
    """Seeded, well separated 2-D blobs: 3 groups of 40."""
    rng = np.random.default_rng(7)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    values = np.vstack([c + rng.normal(scale=0.6, size=(40, 2)) for c in centers])
    return values, np.repeat(np.arange(3), 40)


@pytest.fixture
def crime_frame():
    from tasks.ingest import load_crime

    return load_crime()


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def small_csv(tmp_path):
    """A valid user file: 30 rows, an id column, 3 numeric features in two clear groups."""
    rng = np.random.default_rng(3)
    a = rng.normal(0, 1, size=(15, 3))
    b = rng.normal(8, 1, size=(15, 3))
    frame = pd.DataFrame(np.vstack([a, b]), columns=["alpha", "beta", "gamma"])
    frame.insert(0, "name", [f"item-{i}" for i in range(30)])
    path = tmp_path / "small.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def moto_server():
    """moto's S3 server on a free loopback port, for the session."""
    import subprocess
    import sys

    from tests.processes import free_port, wait_until_answers

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    if not wait_until_answers(url + "/moto-api/", process, 60):
        process.kill()
        raise RuntimeError("moto server did not start")
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on a free loopback port for the session, as in team mode: its
    backend (sqlite here) and artifacts (proxied: clients upload and download through the
    server, never touching the folder) live in a temporary folder no project shares. Yields
    its http:// URL (start: mostly importing MLflow; 18-48 s measured on the loaded 2-core box)."""
    import signal
    import subprocess
    import sys

    from tests.processes import free_port, wait_until_answers

    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'backend.db'}",
            "--serve-artifacts",
            "--artifacts-destination",
            (root / "artifacts").as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        # Not needed by popseg: one process fewer to start and stop.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True,  # its uvicorn worker goes with it
    )
    url = f"http://127.0.0.1:{port}"
    if not wait_until_answers(url + "/health", process, 120):
        os.killpg(process.pid, signal.SIGKILL)
        log_text = (root / "server.log").read_text()[-2000:]
        raise RuntimeError(f"mlflow server did not start: {log_text}")
    yield url
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    log.close()


@pytest.fixture
def moto_s3(moto_server, monkeypatch):
    """AWS clients (boto3, s3fs) pointed at moto with dummy credentials; state reset after."""
    import urllib.request

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield moto_server
    s3fs.S3FileSystem.clear_instance_cache()
    request = urllib.request.Request(moto_server + "/moto-api/reset", method="POST")
    urllib.request.urlopen(request, timeout=10)


# ----------------------------------------------------------------------------- deploy fixtures

TRAIN_FAST = ["evaluate.bootstrap_rounds=5", "cluster.k_max=6"]
# The second version: another k, promoted through the real gate (its thresholds relaxed), so
# version 2 is champion and carries tag previous_champion=1.
TRAIN_SECOND = [
    "evaluate.bootstrap_rounds=5",
    "cluster.k_min=4",
    "cluster.k_max=4",
    "promote.max_silhouette_drop=1.0",
    "promote.min_silhouette=0",
    "promote.min_stability=0",
]


@pytest.fixture(scope="session")
def trained_store(prefect_server, tmp_path_factory):
    """One MLflow store with two registered versions of the crime model (trained once per
    session, ~30 s): version 1, then version 2 promoted to champion over it."""
    from flows.training import training_flow
    from tasks.config import load_params

    store = tmp_path_factory.mktemp("trained-store")
    (store / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(store)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
        first = training_flow(load_params("params.yaml", TRAIN_FAST), True)
        second = training_flow(load_params("params.yaml", TRAIN_SECOND), True)
    assert (first.model_version, second.model_version) == ("1", "2") and second.promoted
    return {"dir": store, "versions": {"1": first, "2": second}}


@pytest.fixture
def trained_project(project_dir, trained_store):
    """A project whose MLflow store is a copy of `trained_store` (artifacts shared, read-only),
    so each test may move aliases freely. Local endpoints started in it are stopped after."""
    import shutil

    shutil.copy(trained_store["dir"] / "mlflow.db", project_dir / "mlflow.db")
    shutil.copytree(trained_store["dir"] / "data", project_dir / "data")
    yield project_dir
    from tasks.deploy import local as deploy

    folder = deploy.state_dir(project_dir)
    for path in folder.glob("*.json") if folder.is_dir() else []:
        state = deploy.read_state(path.stem, project_dir)
        if state is not None:
            deploy._stop_process(state.pid, state.name)


@pytest.fixture
def drifted_csv(trained_project):
    """The crime data shifted (Murder x3, Assault +200): drift against the trained models."""
    from tasks.ingest import load_crime

    frame = load_crime()
    frame["Murder"] *= 3
    frame["Assault"] += 200
    path = trained_project / "crime-drifted.csv"
    frame.to_csv(path, index=False)
    return path
