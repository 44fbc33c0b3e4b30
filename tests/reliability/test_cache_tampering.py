"""Attacks on the Prefect result cache of `popseg train`: a crafted pickle where a cache file
is, a bit-flipped cache file, and the files' modes. Each case runs the real CLI in a
subprocess against the session's Prefect server, on a copy of one seeded PREFECT_HOME.
Each run is a whole `popseg train` (~45 s on 2 busy cores): `slow`. The default suite covers
the same refusals through Prefect's ResultStore in test_cache_storage.py."""

from __future__ import annotations

import base64
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
FAST = ["cluster.k_max=4", "evaluate.bootstrap_rounds=3"]

pytestmark = pytest.mark.slow


def _train(project: Path, home: Path, csv: Path) -> tuple[subprocess.CompletedProcess, dict]:
    from prefect.settings import PREFECT_API_URL

    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_HOME": str(home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
    }
    env.pop("PREFECT_LOCAL_STORAGE_PATH", None)
    command = [str(BIN / "popseg"), "train", "--data", str(csv), "--json", "--no-promote"]
    for setting in FAST:
        command += ["--set", setting]
    done = subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=600
    )
    outcome = json.loads(done.stdout) if done.returncode == 0 else {}
    return done, outcome


def _tags(project: Path, run_id: str) -> dict[str, str]:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    return client.get_run(run_id).data.tags


def _cache_files(home: Path) -> dict[str, Path]:
    storage = home / "storage"
    files = {}
    for step in ("prepare", "train"):
        (found,) = sorted(storage.glob(f"popseg-{step}-*"))
        files[step] = found
    return files


@pytest.fixture(scope="module")
def seeded(prefect_server, tmp_path_factory):
    """One `popseg train` that filled the cache of a PREFECT_HOME of its own."""
    root = tmp_path_factory.mktemp("cache-seed")
    rng = np.random.default_rng(5)
    values = np.vstack([rng.normal(0, 1, size=(30, 3)), rng.normal(8, 1, size=(30, 3))])
    frame = pd.DataFrame(values, columns=["alpha", "beta", "gamma"])
    frame.insert(0, "name", [f"item-{i}" for i in range(60)])
    csv = root / "groups.csv"
    frame.to_csv(csv, index=False)
    project = root / "project"
    project.mkdir()
    (project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    done, outcome = _train(project, root / "prefect", csv)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cached_steps" not in _tags(project, outcome["run_id"])
    shutil.copytree(root / "prefect", root / "pristine", symlinks=True)
    return {"home": root / "prefect", "csv": csv, "outcome": outcome}


@pytest.fixture
def cache_copy(seeded, tmp_path):
    """A fresh project (its own MLflow store) with the seeded PREFECT_HOME as the seed run
    left it. Restored in place, not copied elsewhere: each record signs its array folder's
    absolute path, so a PREFECT_HOME moved to another folder is a cache miss."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    home = seeded["home"]
    shutil.rmtree(home)
    shutil.copytree(home.with_name("pristine"), home, symlinks=True)
    return {"project": project, "home": home, "csv": seeded["csv"], "seed": seeded["outcome"]}


class _Touch:
    """Unpickling this runs `touch` on the marker: what an attacker would put there."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_in_the_cache_is_never_executed(cache_copy):
    home, project = cache_copy["home"], cache_copy["project"]
    marker = project.parent / "pwned"
    payload = base64.encodebytes(pickle.dumps(_Touch(marker)))
    files = _cache_files(home)
    # The train file: a well-formed Prefect result record that names the pickle serializer
    # (what Prefect honours when it reads the record itself).
    record = {
        "metadata": {
            "storage_key": files["train"].name,
            "expiration": None,
            "serializer": {"type": "pickle", "picklelib": "pickle"},
            "prefect_version": "3.8.8",
            "storage_block_id": None,
        },
        "result": payload.decode(),
    }
    files["train"].write_text(json.dumps(record))
    # The prepare file: the bare base64 pickle (Prefect's fallback for a non-JSON file).
    files["prepare"].write_bytes(payload)

    done, outcome = _train(project, home, cache_copy["csv"])

    assert not marker.exists(), "the cached pickle was executed"
    assert done.returncode == 0, done.stderr[-3000:]
    for path in files.values():
        assert f"{path.name}: rejected" in done.stderr
    # Both steps recomputed: the same model as the seed run, nothing taken from the files.
    assert "cached_steps" not in _tags(project, outcome["run_id"])
    assert outcome["k"] == cache_copy["seed"]["k"]
    assert outcome["metrics"] == pytest.approx(cache_copy["seed"]["metrics"], nan_ok=True)
    # The rejected files were replaced by fresh entries, without any pickle in them.
    for path in _cache_files(home).values():
        assert b"pickle" not in path.read_bytes() and b"posix" not in path.read_bytes()


def test_a_bit_flipped_cache_file_is_rejected_and_recomputed(cache_copy):
    home, project = cache_copy["home"], cache_copy["project"]
    target = _cache_files(home)["train"]
    content = bytearray(target.read_bytes())
    middle = len(content) // 2
    content[middle] ^= 0x01
    target.write_bytes(bytes(content))

    done, outcome = _train(project, home, cache_copy["csv"])

    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{target.name}: rejected" in done.stderr
    # The untouched prepare file is still used; the train step ran again.
    assert _tags(project, outcome["run_id"])["cached_steps"] == "prepare"
    assert outcome["k"] == cache_copy["seed"]["k"]
    assert outcome["metrics"] == pytest.approx(cache_copy["seed"]["metrics"], nan_ok=True)
    assert target.read_bytes() != bytes(content)


def test_an_untouched_cache_is_hit_and_its_files_are_private(cache_copy):
    home, project = cache_copy["home"], cache_copy["project"]
    storage = home / "storage"
    assert stat.S_IMODE(storage.stat().st_mode) == 0o700
    for path in storage.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    keys = list(home.glob("*.key"))
    assert len(keys) == 1 and stat.S_IMODE(keys[0].stat().st_mode) == 0o600

    done, outcome = _train(project, home, cache_copy["csv"])

    assert done.returncode == 0, done.stderr[-3000:]
    assert "rejected" not in done.stderr
    assert _tags(project, outcome["run_id"])["cached_steps"] == "prepare,train"
    assert outcome["k"] == cache_copy["seed"]["k"]
    assert outcome["metrics"] == pytest.approx(cache_copy["seed"]["metrics"], nan_ok=True)
