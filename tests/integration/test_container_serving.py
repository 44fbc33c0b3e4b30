"""The model package served by the SageMaker scikit-learn image's own serving stack, outside
Docker: ``sagemaker-containers`` (``Transformer`` + Flask ``Worker``) with the image's Flask,
Werkzeug and numpy pins, in a throwaway environment this test builds once and reuses
(``.popseg/test-envs/``). ``model.tar.gz`` from the project's packaging is extracted into the
model directory, ``code/`` is pip-installed by ``sagemaker_containers`` as in the image, and
requests go through the WSGI entry point the image's gunicorn serves
(tests/integration/sklearn_container_serving.py reproduces the image's serving.py).

Checked: ``/ping``; CSV and JSON answers equal to ``popseg score`` on the same rows; every
request of ``tests/serving_contract.py`` refused with its 4xx status and a short JSON message,
no traceback, as the local endpoint refuses it."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.deploy.sagemaker import SUBMIT_DIRECTORY
from tests.serving_contract import BAD_REQUESTS, ROW

ROOT = Path(__file__).resolve().parents[2]
SERVING_SCRIPT = Path(__file__).with_name("sklearn_container_serving.py")
ENV_ROOT = ROOT / ".popseg" / "test-envs"
MODEL = "popseg-segmentation"
FEATURES = ["Murder", "Assault", "UrbanPop", "Rape", "Density"]
# sagemaker-containers' own pins are stale (flask==1.1.1 only, typing, paramiko, ...): it is
# installed without them, next to what it imports and the versions the image pins
# (aws/sagemaker-scikit-learn-container requirements.txt, branch release-1.4-2-py312, commit
# 85e9fb98dd8ca73af7deecaf1ee1da2d0860dbb0).
SAGEMAKER_CONTAINERS = "sagemaker-containers==2.8.6.post2"
IMAGE_PINS = (
    "numpy==2.1.0",
    "flask==1.1.1",
    "werkzeug==2.0.3",
    "itsdangerous==2.0.1",
    "jinja2<3.0",
    "markupsafe<2.0",
    "six==1.16.0",
    "retrying==1.3.3",
    "protobuf==3.20.3",
    "setuptools==80.9.0",
    # imported at import time by sagemaker_containers.beta.framework, unpinned in the image
    "boto3",
    "scipy",
    "psutil",
    "paramiko",
    "inotify_simple",
)


def _uv() -> list[str]:
    found = os.environ.get("UV") or shutil.which("uv")
    return [found] if found else [sys.executable, "-m", "uv"]


def _run(command: list[str], **kwargs) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"


@contextlib.contextmanager
def _serving_env():
    """The environment's python, created on first use; held under a lock, and brought back to
    what was installed at creation (the container pip-installs the model's code into it)."""
    key = hashlib.sha256(
        json.dumps([sys.version, SAGEMAKER_CONTAINERS, IMAGE_PINS]).encode()
    ).hexdigest()[:12]
    folder = ENV_ROOT / f"sklearn-1.4-2-py312-{key}"
    python = folder / "bin" / "python"
    baseline = folder / "site-packages-at-creation.json"
    ENV_ROOT.mkdir(parents=True, exist_ok=True)
    with open(ENV_ROOT / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not baseline.exists():
            shutil.rmtree(folder, ignore_errors=True)
            # --seed: the container installs code/ with `python -m pip install .`
            _run([*_uv(), "venv", "--seed", "--python", sys.executable, str(folder)])
            install = [*_uv(), "pip", "install", "--python", str(python)]
            _run([*install, "--no-deps", SAGEMAKER_CONTAINERS])
            _run([*install, *IMAGE_PINS])
            # The image's own fix for Python >= 3.10 (docker/1.4-2-py312/final/Dockerfile.cpu).
            mapping = next(
                folder.glob("lib/python*/site-packages/sagemaker_containers/_mapping.py")
            )
            mapping.write_text(
                mapping.read_text().replace("collections.Mapping", "collections.abc.Mapping")
            )
            site = mapping.parents[1]
            baseline.write_text(json.dumps({"site": str(site), "entries": os.listdir(site)}))
        # What an earlier run installed from code/ would be imported instead of this package
        # (pip cannot uninstall it: the generated setup.py also installs an egg-info folder).
        known = json.loads(baseline.read_text())
        site = Path(known["site"])
        for name in set(os.listdir(site)) - set(known["entries"]):
            path = site / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        yield python


def _request(path: str, body: bytes = b"", method: str = "POST", **headers: str) -> dict:
    return {
        "method": method,
        "path": path,
        "body_b64": base64.b64encode(body).decode(),
        "headers": headers,
    }


def _invocation(body: bytes, content_type: str, accept: str = "application/json") -> dict:
    return _request("/invocations", body, **{"Content-Type": content_type, "Accept": accept})


@pytest.fixture(scope="module")
def scored(trained_store, tmp_path_factory):
    """model.tar.gz of the champion, and `popseg score`'s answer on the crime rows."""
    from flows.scoring import score
    from tasks.config import load_params
    from tasks.package import build_package, fetch_registered_chain

    folder = tmp_path_factory.mktemp("container-model")
    store = trained_store["dir"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
        registered = fetch_registered_chain(MODEL, "2", folder / "registered")
        params = load_params(str(store / "params.yaml"))
        data = store / "data" / "raw" / "crime.csv"
        score(params, str(data), str(folder / "scores.csv"), "2")
    package = build_package(registered.chain_dir, folder / "model.tar.gz")
    return package, pd.read_csv(data), pd.read_csv(folder / "scores.csv")


def test_the_sklearn_container_serves_the_package_and_refuses_bad_requests_with_4xx(
    scored, tmp_path
):
    package, frame, scores = scored
    rows = frame[FEATURES]
    # SageMaker's layout under a base directory of our own: the archive is extracted into
    # model/, the code comes from SAGEMAKER_SUBMIT_DIRECTORY (as create_model sets it).
    base = tmp_path / "opt-ml"
    with tarfile.open(package) as archive:
        archive.extractall(base / "model")  # our own package, built by the fixture
    environment = {
        **os.environ,
        "SAGEMAKER_BASE_DIR": str(base),
        "SAGEMAKER_PROGRAM": "inference.py",
        "SAGEMAKER_SUBMIT_DIRECTORY": str(base / Path(SUBMIT_DIRECTORY).relative_to("/opt/ml")),
        "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
    }
    environment.pop("PYTHONPATH", None)
    good = [
        _request("/ping", method="GET"),
        _invocation(rows.to_csv(header=False, index=False).encode(), "text/csv"),
        _invocation(rows[FEATURES[::-1]].to_csv(index=False).encode(), "text/csv"),
        _invocation(
            json.dumps({"instances": [{"features": r} for r in rows.to_numpy().tolist()]}).encode(),
            "application/json",
        ),
        _invocation(rows.to_json(orient="records").encode(), "application/json"),
    ]
    bad = [_invocation(case.body, case.content_type, case.accept) for case in BAD_REQUESTS]
    after = [_invocation(ROW.encode(), "text/csv")]
    (tmp_path / "requests.json").write_text(json.dumps(good + bad + after))
    with _serving_env() as python:
        served = subprocess.run(
            [str(python), str(SERVING_SCRIPT), "requests.json", "answers.json"],
            cwd=tmp_path,  # nothing named inference/chain importable from here
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert served.returncode == 0, served.stderr[-4000:]
    result = json.loads((tmp_path / "answers.json").read_text())
    answers = result["answers"]
    # The code came from this package, pip-installed into the environment as the image does.
    served_code = Path(result["module_file"])
    assert served_code.parent.name == "site-packages", served_code
    assert served_code.read_bytes() == (base / "model" / "code" / "inference.py").read_bytes()

    ping, *predictions = answers[: len(good)]
    assert ping["status"] == 200
    expected_segments = scores["segment"].tolist()
    for answer in predictions:
        assert answer["status"] == 200, answer["body"][:500]
        assert answer["content_type"] == "application/json"
        predicted = json.loads(answer["body"])["predictions"]
        assert [p["closest_cluster"] for p in predicted] == expected_segments
        np.testing.assert_allclose(  # text round trips and another numpy: equal to ~1e-12
            [p["distance_to_cluster"] for p in predicted],
            scores["distance_to_cluster"],
            rtol=1e-9,
        )

    for case, answer in zip(BAD_REQUESTS, answers[len(good) : len(good) + len(bad)], strict=True):
        assert answer["status"] == case.status, (case.name, answer["body"][:500])
        assert answer["content_type"] == "application/json", case.name
        payload = json.loads(answer["body"])
        assert set(payload) == {"code", "message"}, (case.name, payload)
        assert case.expected_container_message in payload["message"], (case.name, payload)
        assert len(answer["body"]) < 600, case.name
    assert answers[-1]["status"] == 200  # still serving
    assert "Traceback" not in served.stderr, served.stderr[-4000:]


def test_the_sklearn_container_takes_raw_category_values(tmp_path):
    """A format-2 chain with a categorical column (`tests.chains.categorical_chain`), packaged
    and served by the container's stack: raw values in JSON and CSV, a missing value (level
    Unknown), an unseen level answered and counted, the one-hot form a 400."""
    from tasks.package import build_package
    from tests.chains import categorical_chain

    categorical_chain().save(str(tmp_path / "chain"))
    package = build_package(tmp_path / "chain", tmp_path / "model.tar.gz")
    base = tmp_path / "opt-ml"
    with tarfile.open(package) as archive:
        archive.extractall(base / "model")  # our own package
    environment = {
        **os.environ,
        "SAGEMAKER_BASE_DIR": str(base),
        "SAGEMAKER_PROGRAM": "inference.py",
        "SAGEMAKER_SUBMIT_DIRECTORY": str(base / Path(SUBMIT_DIRECTORY).relative_to("/opt/ml")),
        "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
    }
    environment.pop("PYTHONPATH", None)
    records = [{"x": 0, "region": "NE"}, {"x": 0, "region": "MW"}, {"x": 9, "region": None}]
    requests = [
        _invocation(json.dumps(records).encode(), "application/json"),
        _invocation(b"region,x\nNE,0\n MW ,0\n,9\n", "text/csv"),
        _invocation(b'{"instances": [[0, "Atlantis"], [0, "NE"]]}', "application/json"),
        _invocation(b'[{"x": 0, "region=NE": 1}]', "application/json"),
    ]
    (tmp_path / "requests.json").write_text(json.dumps(requests))
    with _serving_env() as python:
        served = subprocess.run(
            [str(python), str(SERVING_SCRIPT), "requests.json", "answers.json"],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert served.returncode == 0, served.stderr[-4000:]
    raw_json, raw_csv, unseen, onehot = json.loads((tmp_path / "answers.json").read_text())[
        "answers"
    ]
    for answer in (raw_json, raw_csv):
        assert answer["status"] == 200, answer["body"][:500]
        reply = json.loads(answer["body"])
        assert [p["closest_cluster"] for p in reply["predictions"]] == [1, 0, 2]
        assert "unseen_categories" not in reply
    assert unseen["status"] == 200
    reply = json.loads(unseen["body"])
    assert [p["closest_cluster"] for p in reply["predictions"]] == [0, 1]
    assert reply["unseen_categories"] == {"region": 1}
    assert onehot["status"] == 400
    assert (
        "send the raw value of the categorical column 'region'"
        in (json.loads(onehot["body"])["message"])
    )
