"""The registry lock on a shared tracking store (a real `mlflow server`): processes contending
for it take turns, a SIGKILLed holder blocks the next one no longer than its lease, and a
waiter that gives up says which lock and which setting."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tasks.errors import RegistryError
from tasks.tracking.lock import LOCK_MODEL, lock_kind, registry_lock
from tests import processes

# Holds the lock for argv[2] s, then writes [entered, left] (wall clock) to argv[1];
# argv[1] + ".entered" appears as soon as it holds it.
_HOLDER = """
import json, sys, time
from pathlib import Path
from tasks.tracking.lock import registry_lock
out, hold, timeout, lease = sys.argv[1], *map(float, sys.argv[2:5])
with registry_lock(timeout, lease):
    entered = time.time()
    Path(out + ".entered").write_text(str(entered))
    time.sleep(hold)
    left = time.time()
Path(out).write_text(json.dumps([entered, left]))
"""


def _holder(tmp_path: Path, server: str, name: str, hold: float, timeout: float, lease: float):
    env = {**os.environ, "MLFLOW_TRACKING_URI": server}
    out = tmp_path / name
    command = [sys.executable, "-c", _HOLDER, str(out), str(hold), str(timeout), str(lease)]
    root = Path(__file__).resolve().parents[2]
    return out, processes.start(command, cwd=root, env=env)


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.1)


def _lock_model_exists(server: str) -> bool:
    from mlflow import MlflowClient

    names = [m.name for m in MlflowClient(server, server).search_registered_models()]
    return LOCK_MODEL in names


def test_which_lock_for_which_store():
    assert lock_kind("sqlite:///mlflow.db") == "file"
    assert lock_kind("file:///tmp/mlruns") == "file"
    assert lock_kind("mlruns") == "file"
    assert lock_kind("http://mlflow.internal:5000") == "mlflow"
    assert lock_kind("https://mlflow.example.com") == "mlflow"
    assert lock_kind("postgresql+psycopg://u@db/mlflow") == "mlflow"


def test_processes_take_turns_on_a_shared_store(mlflow_server, tmp_path):
    runs = [_holder(tmp_path, mlflow_server, f"holder-{i}", 2.0, 120, 10) for i in range(2)]
    processes.outputs([process for _, process in runs], timeout=180)
    (_, first_left), (second_entered, _) = sorted(json.loads(out.read_text()) for out, _ in runs)
    assert second_entered >= first_left, "both held the lock at once"
    assert not _lock_model_exists(mlflow_server)  # released, not left behind


def test_a_killed_holder_blocks_until_its_lease_runs_out(mlflow_server, tmp_path, monkeypatch):
    lease = 3.0
    out, holder = _holder(tmp_path, mlflow_server, "killed", 600, 60, lease)
    try:
        _wait_for(Path(f"{out}.entered"), 120)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.communicate(timeout=30)
    killed_at = time.monotonic()
    assert _lock_model_exists(mlflow_server)  # the lock outlives its holder
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)

    # Within the lease a waiter gives up, naming the lock, the holder and the setting.
    with pytest.raises(RegistryError) as raised, registry_lock(1.0, lease):
        pass
    message = str(raised.value)
    assert f"registry lock {LOCK_MODEL!r} in {mlflow_server}: held by " in message
    assert f":{holder.pid}:" in message
    assert "for over 1 s (orchestrate.registry_lock_timeout_s)" in message

    # Once the lease has run out without a heartbeat, the next waiter breaks the lock.
    with registry_lock(60, lease):
        waited = time.monotonic() - killed_at
        assert _lock_model_exists(mlflow_server)  # now held by this process
    assert lease <= waited <= lease + 20
    assert not _lock_model_exists(mlflow_server)


def test_a_holder_stalled_past_its_lease_fails_instead_of_carrying_on(
    mlflow_server, tmp_path, monkeypatch
):
    lease = 2.0
    out, holder = _holder(tmp_path, mlflow_server, "stalled", 3, 60, lease)
    try:
        _wait_for(Path(f"{out}.entered"), 120)
        os.kill(holder.pid, signal.SIGSTOP)  # a paused VM, a partitioned network
        monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        with registry_lock(60, lease):  # taken over once the lease runs out
            os.kill(holder.pid, signal.SIGCONT)
            time.sleep(lease)  # its renewal thread wakes and finds the lock is not its own
            from mlflow import MlflowClient

            lock = MlflowClient(mlflow_server, mlflow_server).get_registered_model(LOCK_MODEL)
            assert f":{os.getpid()}:" in lock.tags["popseg.lock.holder"]  # still this one's
        _, err = holder.communicate(timeout=60)
    finally:
        if holder.poll() is None:  # the test failed midway
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()
            holder.communicate(timeout=30)
    assert holder.returncode == 1 and not out.exists()
    assert f"registry lock {LOCK_MODEL!r} in {mlflow_server}: this run's lease was broken" in err


def test_a_create_racing_the_holders_release_counts_as_contended(mlflow_server, monkeypatch):
    """The tracking server answers a create of a taken name with a lookup for its message; if
    the holder deletes the lock in between, the answer is RESOURCE_DOES_NOT_EXIST. The waiter
    polls again instead of failing the run (seen once in CI)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    from tasks.tracking.lock import _RegistryLease

    lease = _RegistryLease(mlflow_server, 5.0, 3.0)
    real_create = lease.client.create_registered_model
    calls = []

    def create_after_a_race(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 1:
            raise MlflowException(f"{args[0]} not found", error_code=RESOURCE_DOES_NOT_EXIST)
        return real_create(*args, **kwargs)

    monkeypatch.setattr(lease.client, "create_registered_model", create_after_a_race)
    lease.acquire()
    try:
        assert calls == [LOCK_MODEL, LOCK_MODEL]
        holder = lease.client.get_registered_model(LOCK_MODEL).tags["popseg.lock.holder"]
        assert holder == lease.token
    finally:
        assert lease.release() is False
