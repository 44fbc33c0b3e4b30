"""A tracking store that stops taking writes after pre-flight (remounted read-only, a full
disk) fails at register as one `RegistryError` line: no SQLAlchemy tracebacks in the log, no
registered version."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from tasks.errors import RegistryError
from tests.chains import identity_chain


def _record():
    from tasks.register import TrainingRecord

    chain = identity_chain(
        ["x", "y"],
        [[0.0, 0.0], [5.0, 5.0]],
        clip_low=np.full(2, -10.0),
        clip_high=np.full(2, 10.0),
    )
    frame = pd.DataFrame({"row_id": ["a", "b", "c"], "x": [0.0, 5.0, 1.0], "y": [0.0, 5.0, 1.0]})
    return TrainingRecord(
        params_flat={"cluster.k_max": 2},
        tags={"data_md5": "0" * 32},
        chosen_metrics={"silhouette": 0.5},
        per_k_metrics={2: {"silhouette": 0.5}},
        chain=chain,
        training_frame=frame,
        plots=[],
        json_artifacts={},
        csv_artifacts={},
    )


@pytest.fixture(scope="module")
def template_store(tmp_path_factory):
    """A migrated MLflow store with the experiment, made once (MLflow's migrations take ~10 s
    here); each test works on a copy."""
    from tasks import register

    folder = tmp_path_factory.mktemp("template-store")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        register.configure_mlflow()
        register.ensure_experiment("popseg")
    return folder / "mlflow.db"


@pytest.fixture
def read_only_store(template_store, tmp_path, monkeypatch):
    """A copy of the template store reached through a read-only view: of its folder (the
    registry lock cannot be made) or of the database file alone (MLflow's INSERT fails). As
    root (tests run as root here, where a chmod stops nothing) the view is a read-only bind
    mount; as another user, the file or folder is chmod-ed read-only."""
    folder = tmp_path / "store"
    folder.mkdir()
    shutil.copy(template_store, folder / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    root = os.geteuid() == 0
    mounts = []

    def make(what: str) -> str:
        view = tmp_path / "view"
        if root:
            view.mkdir()
            source, target = folder, view
            if what == "file":
                source, target = folder / "mlflow.db", view / "mlflow.db"
                target.touch()
            subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
            mounts.append(target)
            subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        else:
            view.symlink_to(folder)
            (folder / "mlflow.db").chmod(0o444)
            if what == "folder":
                folder.chmod(0o555)
        uri = f"sqlite:///{view / 'mlflow.db'}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        return uri

    yield make
    for target in mounts:
        subprocess.run(["umount", "-l", str(target)], check=False)
    folder.chmod(0o755)


@pytest.mark.parametrize(
    ("what", "reason"),
    [("folder", "Read-only file system"), ("file", "attempt to write a readonly database")],
)
def test_store_turned_read_only_fails_at_register_with_one_line(
    read_only_store, what, reason, caplog
):
    """Past pre-flight (a store remounted read-only mid-run, `popseg stage train`): one
    RegistryError line, no traceback logged, nothing recorded."""
    import mlflow

    from tasks import register

    uri = read_only_store(what)
    with caplog.at_level(logging.INFO), pytest.raises(RegistryError) as excinfo:
        register.register_training(_record(), "popseg", "popseg-segmentation", 50.0, 30)
    message = str(excinfo.value)
    assert "\n" not in message and len(message) < 400
    assert message.startswith(f"MLflow tracking store {uri}: ") and reason in message
    assert not [record for record in caplog.records if record.exc_info], caplog.text
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("popseg")
    assert client.search_runs([experiment.experiment_id]) == []
    assert client.search_registered_models() == []
