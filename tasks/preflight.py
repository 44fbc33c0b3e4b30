"""Pre-flight checks: what a command needs from this machine, checked before Prefect starts or
any work is done, so a missing file, an unwritable tracking store or absent AWS credentials is
one clear error within a second instead of a failure after the whole training.

Each check raises a `PopsegError` subclass with a one-line message naming the path, URI or
variable at fault. They only look: files are probed by opening them or creating (and removing)
a scratch file, AWS credentials through botocore's credential chain without its network
providers, and an http(s) tracking server with one request. No Prefect, no MLflow import.
"""

from __future__ import annotations

import contextlib
import glob
import os
import sqlite3
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

from tasks import table_head
from tasks.errors import CredentialsError, DataError, PopsegError, RegistryError
from tasks.extras import require
from tasks.tracking import sqlite_database

# A store with less room than this cannot take a training's artifacts (plots, chain, data).
PROBE_BYTES = 1 << 20
HTTP_TIMEOUT_S = 2.0
# botocore's credential providers that call the network (container endpoint, EC2 instance
# metadata); pre-flight must stay offline and fast, so they are judged by their settings.
_NETWORK_PROVIDERS = ("container-role", "iam-role")
_CONTAINER_VARIABLES = (
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
_EC2_MARKERS = (
    ("/sys/devices/virtual/dmi/id/sys_vendor", "Amazon EC2"),
    ("/sys/devices/virtual/dmi/id/board_asset_tag", "i-"),
    ("/sys/hypervisor/uuid", "ec2"),
)


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


# ----------------------------------------------------------------------------- data


def check_data_path(
    path: str, folders: bool = False, delimiter: str = ",", capture_logs: bool = False
) -> None:
    """A local path must be a readable file (with ``folders``, as the Dask engine reads: also
    a folder or a glob that matches something) that is not empty, not binary and, as CSV,
    has a header row of unique column names (`tasks.table_head`, the checks ingest runs too);
    an s3:// URL needs AWS credentials. With ``capture_logs`` an endpoint capture log (JSON
    lines, `popseg monitor`) is taken too."""
    if path.startswith("s3://"):
        check_aws_credentials(path, CredentialsError)
        return
    if folders and glob.has_magic(path):
        if not glob.glob(path):
            raise DataError(f"{path}: file not found")
        return
    file_path = Path(path)
    if not file_path.exists():
        raise DataError(f"{path}: file not found")
    if file_path.is_dir():
        if folders:
            return
        raise DataError(f"{path}: is a directory, expected a CSV or Parquet file")
    try:
        table_head.check_table_file(path, delimiter, capture_logs)
    except OSError as error:
        raise DataError(f"{path}: cannot read the file: {_reason(error)}") from None


# ----------------------------------------------------------------------------- tracking store


def check_tracking_store(
    uri: str, artifact_root: Path, experiment: str | None = None, write: bool = True
) -> None:
    """The MLflow store at ``uri`` answers (and, with ``write``, takes writes): an sqlite file
    and its folder, the experiment's artifact folder (``artifact_root`` for a new one), a local
    file store's folder, or an http(s) tracking server. Other stores are not checked here."""
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        database = sqlite_database(uri)
        if database is None:  # in-memory
            return
        location = _check_sqlite(uri, database, experiment, write)
        if write:
            _check_writable_folder(uri, location or artifact_root, "artifact folder")
    elif scheme in ("http", "https"):
        _check_http(uri)
    elif scheme in ("file", "") and write:
        folder = Path(unquote(urlparse(uri).path)) if scheme == "file" else Path(uri)
        _check_writable_folder(uri, folder, "store folder")


def _check_sqlite(uri: str, database: Path, experiment: str | None, write: bool) -> Path | None:
    """The database file (if any) opens as sqlite and takes writes, and its folder takes new
    files (sqlite's journal, the registry lock). Returns the artifact folder the store
    records for ``experiment``, if it exists and is local."""
    if database.exists():
        if database.is_dir():
            raise RegistryError(f"MLflow tracking store {uri}: {database} is a directory")
        if write:
            try:
                os.close(os.open(database, os.O_WRONLY | os.O_APPEND))
            except OSError as error:
                raise RegistryError(
                    f"MLflow tracking store {uri}: {database} is not writable "
                    f"({_reason(error)}); nothing was run"
                ) from None
        location = _recorded_artifact_folder(uri, database, experiment)
    else:
        location = None  # readers report the missing model themselves
    if write:
        _check_writable_folder(uri, database.parent, "store folder")
    return location


def _recorded_artifact_folder(uri: str, database: Path, experiment: str | None) -> Path | None:
    """Opens the store read-only: a file that is not an sqlite database is an error now; the
    artifact folder recorded for ``experiment`` is returned when it is a local one."""
    try:
        with contextlib.closing(
            sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=1)
        ) as connection:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            row = None
            with contextlib.suppress(sqlite3.DatabaseError):  # no tables yet: a new store
                row = connection.execute(
                    "SELECT artifact_location FROM experiments WHERE name = ?", (experiment,)
                ).fetchone()
    except sqlite3.OperationalError as error:
        if "locked" in str(error):  # another run is writing: the store is alive
            return None
        raise RegistryError(f"MLflow tracking store {uri}: {database}: {error}") from None
    except sqlite3.DatabaseError as error:  # not a database, corrupt
        raise RegistryError(f"MLflow tracking store {uri}: {database}: {error}") from None
    if row is None or not str(row[0]).startswith("file:"):
        return None
    return Path(unquote(urlparse(row[0]).path))


def _check_writable_folder(uri: str, folder: Path, what: str) -> None:
    """The folder (or the nearest existing folder above it, where it would be created) takes a
    new file of PROBE_BYTES: catches read-only mounts, permissions (as non-root) and full
    disks alike, which a mode check would not (root ignores modes)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RegistryError(f"MLflow tracking store {uri}: {what} {folder}: {existing} is a file")
    try:
        handle, probe = tempfile.mkstemp(prefix=".popseg-preflight-", dir=existing)
    except OSError as error:
        raise RegistryError(
            f"MLflow tracking store {uri}: {what} {folder} is not writable "
            f"({_reason(error)}); nothing was run"
        ) from None
    try:
        with os.fdopen(handle, "wb") as scratch:
            scratch.write(b"\0" * PROBE_BYTES)
    except OSError as error:
        raise RegistryError(
            f"MLflow tracking store {uri}: {what} {folder} cannot take "
            f"{PROBE_BYTES >> 20} MiB ({_reason(error)}); nothing was run"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)


def _check_http(uri: str) -> None:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=HTTP_TIMEOUT_S):
            return
    except urllib.error.HTTPError:
        return  # an answer, if not a healthy one: the server is there
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise RegistryError(
            f"MLflow tracking server {uri} does not answer ({reason}); start it or set "
            "MLFLOW_TRACKING_URI to a reachable store"
        ) from None


# ----------------------------------------------------------------------------- AWS credentials


def check_aws_credentials(purpose: str, error_type: type[PopsegError]) -> None:
    """AWS credentials are configured for ``purpose`` (an s3:// path, a sagemaker target):
    botocore's chain (variables, profiles, shared files, SSO, assume-role, credential_process)
    without its network providers, which count when their settings are there (container
    credential variables) or this machine is an EC2 instance. Needs the 'aws' extra."""
    require("aws", purpose)
    import botocore.session
    from botocore.exceptions import BotoCoreError

    profile = os.environ.get("AWS_PROFILE")
    named_profile = f" (AWS_PROFILE={profile})" if profile else ""
    try:
        session = botocore.session.Session()
        resolver = session.get_component("credential_provider")
        for name in _NETWORK_PROVIDERS:
            with contextlib.suppress(ValueError):
                resolver.remove(name)
        credentials = resolver.load_credentials()
    except BotoCoreError as error:  # partial credentials, an unknown AWS_PROFILE
        raise error_type(f"{purpose}: unusable AWS credentials: {error}{named_profile}") from None
    if credentials is not None:
        return
    if any(os.environ.get(name) for name in _CONTAINER_VARIABLES) or _on_ec2():
        return
    shared = os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")
    config = os.environ.get("AWS_CONFIG_FILE", "~/.aws/config")
    raise error_type(
        f"{purpose}: no AWS credentials found: set AWS_ACCESS_KEY_ID and "
        f"AWS_SECRET_ACCESS_KEY, or a profile in {shared} or {config}{named_profile}"
    )


def _on_ec2() -> bool:
    """An EC2 instance may have an instance role; told from local files, not a request."""
    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        return False
    for path, marker in _EC2_MARKERS:
        with contextlib.suppress(OSError):
            if Path(path).read_text().strip().startswith(marker):
                return True
    return False
