"""The registry lock: register, promote and rollback hold it so two runs never interleave their
writes to the registry or both move ``champion`` past the same old champion.

Which lock is used when (:func:`lock_kind`):

* an embedded store (``sqlite:`` — the default ``sqlite:///mlflow.db`` — or a local file
  store): a file lock next to the sqlite file (``mlflow.db.lock``), else ``.popseg/registry.lock``.
  Every writer of such a store runs on this machine, so a file lock is enough.
* any other store (``http(s)://`` tracking server, a database URI such as
  ``postgresql://``): a lease lock kept *in the MLflow registry itself*, the registered model
  ``popseg-registry-lock``. Creating a registered model is atomic in every MLflow backend
  (the name is the primary key: the second ``create`` fails with RESOURCE_ALREADY_EXISTS),
  and every client that can write the registry necessarily shares it, so nothing else needs to
  be reachable or configured. (A Prefect global concurrency limit would hold only if every
  client also shared one Prefect server, and a client with an ephemeral Prefect would pass
  silently; clients do not know the database behind an MLflow server, which rules out a
  PostgreSQL advisory lock.)

The lease: the holder tags the lock with its token and ``lease_s`` and bumps a ``heartbeat``
tag every ``lease_s / 3`` s from a thread. A waiter that sees the same holder and heartbeat for
longer than the holder's lease, timed on its own monotonic clock (no clock agreement between
machines needed), treats the holder as dead (SIGKILLed, machine gone) and breaks the lock. Only
one waiter breaks a given stale lease: it must first create the registered model
``popseg-registry-lock-break-<digest of holder and heartbeat>``, and it re-reads the lock before
deleting it. What a lease cannot rule out, no lease can: a holder that stalls longer than its
lease (a paused VM, a partitioned network) and then resumes loses the lock while working; its
heartbeat thread notices and the step fails with a `RegistryError` when it leaves the lock.

Waiting longer than ``orchestrate.registry_lock_timeout_s`` is a `RegistryError` naming the
lock, its holder and the setting. Within one process the lock is re-entrant (a step holding it
may call code that takes it again).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tasks.errors import RegistryError
from tasks.tracking import sqlite_database, tracking_uri

logger = logging.getLogger(__name__)

LOCK_MODEL = "popseg-registry-lock"
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_LEASE_S = 60.0
_HOLDER, _LEASE, _HEARTBEAT = "popseg.lock.holder", "popseg.lock.lease_s", "popseg.lock.heartbeat"
_TIMEOUT_SETTING = "orchestrate.registry_lock_timeout_s"


def lock_kind(uri: str) -> str:
    """``"file"`` for an embedded store (sqlite, a local file store), else ``"mlflow"``."""
    scheme = urlparse(uri).scheme
    # A Windows drive letter parses as a one-letter scheme.
    return "file" if scheme in ("sqlite", "file", "") or len(scheme) == 1 else "mlflow"


def registry_lock_path(uri: str | None = None) -> Path:
    """The file lock of an embedded store: next to a sqlite file, else in the project's
    .popseg/."""
    database = sqlite_database(uri or tracking_uri())
    if database is not None:
        return Path(f"{database}.lock")
    return Path(".popseg") / "registry.lock"


_PROCESS_LOCKS: dict[str, threading.RLock] = {}
_HELD: dict[str, int] = {}
_GUARD = threading.Lock()


@contextlib.contextmanager
def registry_lock(
    timeout_s: float = DEFAULT_TIMEOUT_S, lease_s: float = DEFAULT_LEASE_S
) -> Iterator[str]:
    """Hold the registry lock of the current tracking store; yields what it is (a file path or
    ``mlflow:popseg-registry-lock``)."""
    uri = tracking_uri()
    if lock_kind(uri) == "file":
        with _file_lock(registry_lock_path(uri), timeout_s) as path:
            yield str(path)
        return
    with _GUARD:
        local = _PROCESS_LOCKS.setdefault(uri, threading.RLock())
    # Threads of this process queue here first; the outermost holder takes the store's lock.
    if not local.acquire(timeout=timeout_s):
        raise _timeout_error(uri, timeout_s, "another thread of this process")
    try:
        if _HELD.get(uri, 0):
            _HELD[uri] += 1
            try:
                yield f"mlflow:{LOCK_MODEL}"
            finally:
                _HELD[uri] -= 1
            return
        lease = _RegistryLease(uri, timeout_s, lease_s)
        _acquire(lease)
        _HELD[uri] = 1
        try:
            yield f"mlflow:{LOCK_MODEL}"
        finally:
            _HELD[uri] = 0
            lost = lease.release()
        if lost:  # only when the step itself succeeded: its own error says more
            raise RegistryError(
                f"registry lock {LOCK_MODEL!r} in {uri}: this run's lease was broken by another "
                f"run while it held the lock (not renewed within {lease_s:g} s); check the "
                "registry for a concurrent change"
            )
    finally:
        local.release()


def _acquire(lease: _RegistryLease) -> None:
    """A store that refuses the lock model (down, no write permission, a registry with other
    naming rules) is one line naming the lock: no lock, no registry step."""
    from mlflow.exceptions import MlflowException

    try:
        lease.acquire()
    except MlflowException as error:
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
        raise RegistryError(
            f"registry lock {LOCK_MODEL!r} in {lease.uri}: cannot take it: {reason[:300]}; "
            "nothing was registered"
        ) from error


# ----------------------------------------------------------------------------- embedded store

_FILE_LOCKS: dict[str, Any] = {}


@contextlib.contextmanager
def _file_lock(path: Path, timeout_s: float) -> Iterator[Path]:
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    # One lock object per file in this process: re-entrant, still excluding other processes.
    lock = _FILE_LOCKS.setdefault(key, FileLock(key))
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout:
        raise RegistryError(
            f"registry lock {path}: another run has held it for over {timeout_s:g} s "
            f"({_TIMEOUT_SETTING}); nothing was registered"
        ) from None
    try:
        yield path
    finally:
        lock.release()


# ----------------------------------------------------------------------------- shared store


def _timeout_error(uri: str, timeout_s: float, holder: str) -> RegistryError:
    return RegistryError(
        f"registry lock {LOCK_MODEL!r} in {uri}: held by {holder} for over {timeout_s:g} s "
        f"({_TIMEOUT_SETTING}); nothing was registered"
    )


@dataclass
class _Seen:
    """The lock's state as a waiter last saw it, and when (this machine's monotonic clock)."""

    state: tuple[str, str]
    since: float
    lease_s: float


class _RegistryLease:
    """The lease lock on one MLflow store (see the module docstring)."""

    def __init__(self, uri: str, timeout_s: float, lease_s: float) -> None:
        from mlflow import MlflowClient

        self.uri, self.timeout_s, self.lease_s = uri, timeout_s, lease_s
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        host = socket.gethostname()
        self.token = f"{host}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.description = (
            f"popseg registry lock, held by pid {os.getpid()} on {host} since "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC; deleted when released, broken by the "
            f"next waiter if not renewed within {lease_s:g} s"
        )
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        seen: _Seen | None = None
        poll = min(1.0, max(0.05, self.lease_s / 10))
        while True:
            if self._try_create():
                break
            model = self._read(LOCK_MODEL)
            if model is not None:
                tags = model.tags
                state = (tags.get(_HOLDER, "?"), tags.get(_HEARTBEAT, "?"))
                now = time.monotonic()
                if seen is None or seen.state != state:
                    seen = _Seen(state, now, _float(tags.get(_LEASE), DEFAULT_LEASE_S))
                elif now - seen.since > seen.lease_s and self._break(seen, now):
                    seen = None
                    continue
            if time.monotonic() > deadline:
                holder = seen.state[0] if seen else "another run"
                raise _timeout_error(self.uri, self.timeout_s, holder)
            time.sleep(poll * random.uniform(0.5, 1.5))  # jitter: waiters do not poll in step
        self._thread = threading.Thread(target=self._renew, name="registry-lease", daemon=True)
        self._thread.start()

    def release(self) -> bool:
        """Stop renewing and delete the lock if it is still ours; True if the lease was lost."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        model = self._read(LOCK_MODEL)
        if model is not None and model.tags.get(_HOLDER) == self.token:
            self._delete(LOCK_MODEL)
        else:
            self.lost.set()
        return self.lost.is_set()

    def _try_create(self) -> bool:
        from mlflow.exceptions import MlflowException

        tags = {_HOLDER: self.token, _LEASE: f"{self.lease_s:g}", _HEARTBEAT: "0"}
        try:
            self.client.create_registered_model(LOCK_MODEL, tags, self.description)
        except MlflowException as error:
            # RESOURCE_DOES_NOT_EXIST: the server found the name taken, then looked the model
            # up for its message after the holder had deleted it. Contended either way.
            if error.error_code in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                return False
            raise
        return True

    def _renew(self) -> None:
        beat = 0
        while not self._stop.wait(self.lease_s / 3):
            beat += 1
            try:
                model = self._read(LOCK_MODEL)
                if model is None or model.tags.get(_HOLDER) != self.token:
                    logger.error("registry lock %s: lease lost (broken by another run)", LOCK_MODEL)
                    self.lost.set()
                    return
                self.client.set_registered_model_tag(LOCK_MODEL, _HEARTBEAT, str(beat))
            except Exception as error:  # a blip: the next beat may get through within the lease
                logger.warning("registry lock %s: renewing the lease failed: %s", LOCK_MODEL, error)

    def _break(self, seen: _Seen, now: float) -> bool:
        """Delete the lock of a holder that has not renewed its lease, unless another waiter is
        doing so (False then); a breaker that died midway is itself cleared after a lease."""
        from mlflow.exceptions import MlflowException

        digest = hashlib.sha256("\0".join(seen.state).encode()).hexdigest()[:16]
        breaker = f"{LOCK_MODEL}-break-{digest}"
        try:
            self.client.create_registered_model(breaker, {_HOLDER: self.token})
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            if now - seen.since > 2 * seen.lease_s:  # its breaker is gone too
                self._delete(breaker)
            return False
        try:
            model = self._read(LOCK_MODEL)
            if (
                model is not None
                and (
                    model.tags.get(_HOLDER, "?"),
                    model.tags.get(_HEARTBEAT, "?"),
                )
                == seen.state
            ):
                logger.warning(
                    "registry lock %s: holder %s did not renew its %g s lease; lock broken",
                    LOCK_MODEL,
                    seen.state[0],
                    seen.lease_s,
                )
                self._delete(LOCK_MODEL)
        finally:
            self._delete(breaker)
        return True

    def _read(self, name: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(name)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def _delete(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_registered_model(name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise


def _float(text: str | None, default: float) -> float:
    try:
        return float(text) if text is not None else default
    except ValueError:
        return default
