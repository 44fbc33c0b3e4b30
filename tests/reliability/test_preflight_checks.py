"""The pre-flight checks themselves, in process: what passes, what is refused, and how the
refusal reads (one line naming the file, URI or variable)."""

from __future__ import annotations

import sqlite3

import pytest

from tasks.errors import CredentialsError, DataError, DeployError, RegistryError
from tasks.preflight import check_aws_credentials, check_data_path, check_tracking_store


def test_data_path(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("id,x\na,1\n")
    check_data_path(str(table))
    with pytest.raises(DataError, match=r"t2\.csv: file not found$"):
        check_data_path(str(tmp_path / "t2.csv"))
    with pytest.raises(DataError, match="is a directory"):
        check_data_path(str(tmp_path))
    # The Dask engine reads folders and globs.
    check_data_path(str(tmp_path), folders=True)
    check_data_path(str(tmp_path / "*.csv"), folders=True)
    with pytest.raises(DataError, match=r"\*\.parquet: file not found$"):
        check_data_path(str(tmp_path / "*.parquet"), folders=True)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"  \n\n", "the file is empty"),
        (b"\x00\x01\x02\xff\xfe binary", "looks like a binary file"),
        (b"\n\nid,x\na,1\n", "the first line is empty"),
        (b'id,"x",x\na,1,2\n', "duplicate column name 'x'"),
        (b"id;x\na;1\n", "wrong delimiter? Use --set data.delimiter=';'"),
    ],
)
def test_unusable_table_files_are_refused_as_ingest_refuses_them(tmp_path, content, message):
    """The pre-flight reads only the file's first bytes; ingest (the flow's and DVC's step)
    refuses the same file with the same message."""
    from tasks.ingest import parse_table

    table = tmp_path / "bad.csv"
    table.write_bytes(content)
    with pytest.raises(DataError) as refused:
        check_data_path(str(table))
    assert message in str(refused.value) and str(table) in str(refused.value)
    with pytest.raises(DataError) as ingest_refused:
        parse_table(content, str(table))
    assert str(ingest_refused.value) == str(refused.value)


def test_table_checks_pass_good_files_and_leave_the_rest_to_the_parser(tmp_path):
    good = tmp_path / "good.tsv"
    good.write_bytes(b"id\tx\na\t1\n")
    check_data_path(str(good), delimiter="\t")
    # Parquet is not sniffed as text; a long header beyond the first bytes is not judged.
    parquet = tmp_path / "t.parquet"
    parquet.write_bytes(b"PAR1" + bytes(range(256)))
    check_data_path(str(parquet))
    long_header = tmp_path / "long.csv"
    long_header.write_bytes(b"a," * 40_000 + b"a\n1\n")
    check_data_path(str(long_header))


def test_sqlite_store_that_is_not_a_database(tmp_path):
    store = tmp_path / "mlflow.db"
    store.write_text("this is not sqlite, it is long enough to have a header" * 10)
    uri = f"sqlite:///{store}"
    with pytest.raises(RegistryError, match="file is not a database") as excinfo:
        check_tracking_store(uri, tmp_path / "mlartifacts", "popseg")
    assert str(excinfo.value).startswith(f"MLflow tracking store {uri}: {store}")


def test_sqlite_store_busy_with_another_writer_passes(tmp_path):
    """Another run holding the write lock is a live store, not an error."""
    store = tmp_path / "mlflow.db"
    writer = sqlite3.connect(store, isolation_level=None)
    writer.execute("CREATE TABLE experiments (name TEXT, artifact_location TEXT)")
    writer.execute("BEGIN EXCLUSIVE")
    try:
        check_tracking_store(f"sqlite:///{store}", tmp_path / "mlartifacts", "popseg")
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_recorded_artifact_folder_is_the_one_checked(tmp_path):
    """An existing experiment keeps its artifacts where the store says, not in ./mlartifacts."""
    store = tmp_path / "mlflow.db"
    connection = sqlite3.connect(store)
    connection.execute("CREATE TABLE experiments (name TEXT, artifact_location TEXT)")
    connection.execute(
        "INSERT INTO experiments VALUES ('popseg', 'file:///sys/kernel/popseg-artifacts')"
    )
    connection.commit()
    connection.close()
    uri = f"sqlite:///{store}"
    check_tracking_store(uri, tmp_path / "mlartifacts", "another-experiment")
    with pytest.raises(RegistryError, match="artifact folder /sys/kernel/popseg-artifacts"):
        check_tracking_store(uri, tmp_path / "mlartifacts", "popseg")
    check_tracking_store(uri, tmp_path / "mlartifacts", "popseg", write=False)


@pytest.fixture
def bare_aws(tmp_path, monkeypatch):
    """No AWS variables, empty shared files, no instance metadata."""
    import os

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    empty = tmp_path / "empty"
    empty.write_text("")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return tmp_path


def test_aws_credentials_sources(bare_aws, monkeypatch):
    with pytest.raises(CredentialsError, match=r"^s3://b/k: no AWS credentials found"):
        check_aws_credentials("s3://b/k", CredentialsError)
    with pytest.raises(DeployError, match="AWS_PROFILE=nobody"):
        monkeypatch.setenv("AWS_PROFILE", "nobody")
        check_aws_credentials("sagemaker deploy", DeployError)
    shared = bare_aws / "credentials"
    shared.write_text("[nobody]\naws_access_key_id = AKIA\naws_secret_access_key = s\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    check_aws_credentials("s3://b/k", CredentialsError)  # the profile is found
    monkeypatch.delenv("AWS_PROFILE")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(bare_aws / "empty"))
    # A container's credential endpoint counts by its variable; it is not called.
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:1/creds")
    check_aws_credentials("s3://b/k", CredentialsError)


def test_full_store_folder_is_refused(tmp_path):
    """A store folder without room for 1 MiB: as root a 256 KiB tmpfs; as another user
    (who may not mount) a 256 KiB file-size limit on this process."""
    import os
    import resource
    import subprocess

    folder = tmp_path / "full"
    folder.mkdir()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    if os.geteuid() == 0:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], check=True
        )
        try:
            with pytest.raises(RegistryError, match="No space left on device") as excinfo:
                check_tracking_store(uri, tmp_path / "mlartifacts", "popseg")
            leftovers = list(folder.iterdir())
        finally:
            subprocess.run(["umount", "-l", str(folder)], check=False)
    else:
        limits = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, limits[1]))
        try:
            with pytest.raises(RegistryError, match="File too large") as excinfo:
                check_tracking_store(uri, tmp_path / "mlartifacts", "popseg")
            leftovers = list(folder.iterdir())
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    assert f"store folder {folder} cannot take 1 MiB" in str(excinfo.value)
    assert leftovers == []  # the probe file is removed


def test_capture_logs_pass_where_monitor_reads_them(tmp_path):
    """`popseg monitor --data` takes an endpoint capture log (JSON lines, no header row): its
    pre-flight does not read it as CSV. Training's pre-flight still does, and an empty log is
    refused either way."""
    record = '{"captureData": {"endpointInput": {"data": "80,80,1\\n80,80,2\\n"}}}\n'
    for name in ("capture.jsonl", "capture.log"):
        log = tmp_path / name
        log.write_text(record * 3)
        check_data_path(str(log), capture_logs=True)
    with pytest.raises(DataError, match="duplicate column name"):
        check_data_path(str(tmp_path / "capture.log"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="the file is empty"):
        check_data_path(str(empty), capture_logs=True)
