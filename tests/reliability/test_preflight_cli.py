"""Pre-flight, as a user meets it: a fresh `popseg` process refuses a missing file, an
unwritable tracking store or absent AWS credentials with one `error:` line and its exit code,
before the Prefect server starts or any work is done (before: 14-17 s, or a failure at
register after the whole training)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

POPSEG = str(Path(sys.executable).with_name("popseg"))
# Generous for a loaded 2-core machine; refusing after the Prefect server took 14 s or more.
FAST_S = 10.0


def _popseg(args: list[str], cwd: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    """A fresh process as a user starts it; its Prefect state (if any) under cwd/.prefect."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_API", "PREFECT_HOME", "AWS_", "MLFLOW_TRACKING"))
    }
    base["MLFLOW_TRACKING_URI"] = f"sqlite:///{cwd / 'mlflow.db'}"
    base.update(env)
    started = time.perf_counter()
    result = subprocess.run(
        [POPSEG, *args], cwd=cwd, env=base, capture_output=True, text=True, timeout=300
    )
    return result, time.perf_counter() - started


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    return errors[0]


def _nothing_started(project: Path) -> None:
    """Prefect keeps its database under PREFECT_HOME (here cwd/.prefect) once it starts."""
    assert not (project / ".prefect").exists()


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody can write to. Tests run as root here, where a chmod stops nothing: as
    root a read-only tmpfs is mounted over it (root may mount here); as another user a
    chmod 0555 does the job. `populate` fills it before it turns read-only."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    mounted = []

    def make(populate=None) -> Path:
        if os.geteuid() == 0:
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)], check=True
            )
            mounted.append(folder)
            if populate:
                populate(folder)
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        else:
            if populate:
                populate(folder)
            folder.chmod(0o555)
        return folder

    yield make
    for path in mounted:
        subprocess.run(["umount", str(path)], check=False)
    folder.chmod(0o755)


def test_missing_file_is_refused_before_prefect_starts(project_dir):
    result, seconds = _popseg(["train", "--data", "missing.csv"], project_dir)
    assert result.returncode == 3
    assert _one_error_line(result) == "error: missing.csv: file not found"
    assert seconds < FAST_S, f"{seconds:.1f} s"
    _nothing_started(project_dir)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "error: bad.csv: the file is empty"),
        (b"\x00\x01PK\x03\x04" + bytes(range(256)) * 8, "error: bad.csv: looks like a binary file"),
        (b"\nid,x\na,1\n", "error: bad.csv: the first line is empty"),
        (b"id,x,x\na,1,2\n", "error: bad.csv: duplicate column name 'x' (columns 2 and 3)"),
        (b"id;x;y\na;1;2\n", "error: bad.csv: found a single column 'id;x;y'"),
    ],
)
def test_unusable_file_is_refused_before_prefect_starts(project_dir, content, message):
    """Empty, binary or a bad header: refused by the pre-flight, in the words ingest uses,
    with no Prefect server started (no Prefect database) and no run recorded."""
    (project_dir / "bad.csv").write_bytes(content)
    result, seconds = _popseg(["train", "--data", "bad.csv"], project_dir)
    assert result.returncode == 3
    assert _one_error_line(result).startswith(message)
    assert seconds < FAST_S, f"{seconds:.1f} s"
    _nothing_started(project_dir)
    assert not (project_dir / "data" / "raw").exists()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["train", "--data", "data"], 3, "data: is a directory"),
        (["monitor", "--data", "gone.jsonl"], 3, "gone.jsonl: file not found"),
        (["score", "--data", "gone.csv", "-o", "out.csv"], 3, "gone.csv: file not found"),
    ],
)
def test_bad_data_paths_of_other_commands(project_dir, args, code, message):
    (project_dir / "data").mkdir()
    result, seconds = _popseg(args, project_dir)
    assert result.returncode == code
    assert message in _one_error_line(result)
    assert seconds < FAST_S, f"{seconds:.1f} s"
    _nothing_started(project_dir)
    assert not (project_dir / "out.csv").exists()


def test_read_only_store_folder_is_refused_before_training(project_dir, small_csv, read_only_dir):
    store = read_only_dir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    result, seconds = _popseg(
        ["train", "--data", str(small_csv)], project_dir, MLFLOW_TRACKING_URI=uri
    )
    assert result.returncode == 5
    line = _one_error_line(result)
    assert uri in line and "not writable" in line
    assert seconds < FAST_S, f"{seconds:.1f} s"
    _nothing_started(project_dir)


def test_read_only_store_file_is_refused_before_training(project_dir, small_csv, read_only_dir):
    """An existing store on a read-only mount (its folder and file both refuse writes)."""
    import sqlite3

    def populate(folder: Path) -> None:
        connection = sqlite3.connect(folder / "mlflow.db")
        connection.execute("CREATE TABLE experiments (name TEXT, artifact_location TEXT)")
        connection.commit()
        connection.close()  # an open file keeps the mount busy: no remount read-only

    store = read_only_dir(populate)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    result, _ = _popseg(["run", "--no-deploy"], project_dir, MLFLOW_TRACKING_URI=uri)
    assert result.returncode == 5
    line = _one_error_line(result)
    assert f"{store / 'mlflow.db'} is not writable" in line
    _nothing_started(project_dir)


def test_unwritable_store_folder_even_for_root(project_dir, small_csv):
    """/sys/kernel takes no new files, whoever asks: no mount needed."""
    uri = "sqlite:////sys/kernel/popseg/mlflow.db"
    result, _ = _popseg(["train", "--data", str(small_csv)], project_dir, MLFLOW_TRACKING_URI=uri)
    assert result.returncode == 5
    assert "/sys/kernel/popseg is not writable" in _one_error_line(result)
    _nothing_started(project_dir)


def test_read_only_artifact_folder_is_refused(project_dir, small_csv, read_only_dir):
    """The store takes writes but the artifact folder (./mlartifacts) does not."""
    folder = read_only_dir()
    (project_dir / "mlartifacts").symlink_to(folder)
    result, _ = _popseg(["train", "--data", str(small_csv)], project_dir)
    assert result.returncode == 5
    line = _one_error_line(result)
    assert "artifact folder" in line and "mlartifacts" in line
    _nothing_started(project_dir)


def test_unreachable_tracking_server(project_dir, small_csv):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    result, seconds = _popseg(
        ["train", "--data", str(small_csv)], project_dir, MLFLOW_TRACKING_URI=uri
    )
    assert result.returncode == 5
    assert f"MLflow tracking server {uri} does not answer" in _one_error_line(result)
    assert seconds < FAST_S
    _nothing_started(project_dir)


def _no_aws_credentials(tmp_path: Path, moto_server: str) -> dict[str, str]:
    """No credentials anywhere: variables unset (by `_popseg`), shared files empty, no
    instance metadata; S3 calls would go to moto."""
    empty = tmp_path / "aws-empty"
    empty.write_text("")
    return {
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        "AWS_CONFIG_FILE": str(empty),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def test_s3_path_without_credentials_fails_at_once(project_dir, tmp_path, moto_server):
    env = _no_aws_credentials(tmp_path, moto_server)
    result, seconds = _popseg(["train", "--data", "s3://popseg-data/crime.csv"], project_dir, **env)
    assert result.returncode == 3
    line = _one_error_line(result)
    assert "s3://popseg-data/crime.csv: no AWS credentials found" in line
    assert "AWS_ACCESS_KEY_ID" in line
    assert seconds < FAST_S, f"{seconds:.1f} s"
    _nothing_started(project_dir)


def test_partial_credentials_name_what_is_missing(project_dir, tmp_path, moto_server):
    env = _no_aws_credentials(tmp_path, moto_server)
    result, _ = _popseg(
        ["train", "--data", "s3://popseg-data/crime.csv"],
        project_dir,
        **env,
        AWS_ACCESS_KEY_ID="AKIATEST",
    )
    assert result.returncode == 3
    assert "missing: AWS_SECRET_ACCESS_KEY" in _one_error_line(result)


def test_sagemaker_deploy_without_credentials_fails_at_once(project_dir, tmp_path, moto_server):
    env = _no_aws_credentials(tmp_path, moto_server)
    settings = ["--region", "us-east-1", "--bucket", "b", "--role-arn", "arn:aws:iam::1:role/r"]
    result, seconds = _popseg(["deploy", "--target", "sagemaker", *settings], project_dir, **env)
    assert result.returncode == 7
    assert "sagemaker deploy: no AWS credentials found" in _one_error_line(result)
    assert seconds < FAST_S, f"{seconds:.1f} s"
    assert not (project_dir / "mlflow.db").exists()  # the registry was not even opened
