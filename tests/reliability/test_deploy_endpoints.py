"""Issue 13, deploy: endpoint names follow SageMaker's rule everywhere (refused before anything
is written), and two `popseg deploy` to one name at the same moment end with one server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tasks import deploy
from tests.e2e.helpers import invoke, run_popseg


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in root.rglob("*")
    }


@pytest.mark.parametrize(
    "args",
    [
        ["deploy", "--endpoint-name", "../../escape"],
        ["deploy", "-n", "../../../escape"],
        ["deploy", "-n", "bad_name"],
        ["deploy", "-n", "-leading-hyphen"],
        ["deploy", "-n", "x" * 64],
        ["undeploy", "../../escape"],
        ["rollback", "../../escape"],
        ["deploy", "--set", "deploy.endpoint_name=../../escape"],
    ],
)
def test_bad_endpoint_names_are_refused_before_anything_is_written(trained_project, args):
    before = _files(trained_project)
    result = invoke(*args)
    assert result.exit_code == 2, result.stdout + result.stderr
    bad = args[-1].split("=", 1)[-1]
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and repr(bad) in result.stderr
    if args[1] != "--set":  # params errors list every bad key, one per line
        assert len(lines) == 1
    assert _files(trained_project) == before
    assert not (trained_project / ".popseg").exists()
    for escaped in (trained_project / "escape", trained_project.parent / "escape"):
        assert not escaped.exists() and not escaped.with_suffix(".json").exists()


def _servers(name: str) -> list[int]:
    """Live endpoint-server processes for ``name`` (as `tasks.deploy` recognises them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and deploy._pid_is_server(int(entry.name), name):
            with contextlib.suppress(OSError):
                if b"Z" not in (entry / "stat").read_bytes().split(b")")[-1][:3]:
                    found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_two_concurrent_deploys_end_with_one_tracked_server(trained_project):
    name = "race"
    try:
        with ThreadPoolExecutor(2) as pool:
            runs = list(
                pool.map(
                    lambda _: run_popseg(["deploy", "-n", name, "--json"], trained_project),
                    range(2),
                )
            )
        for run in runs:
            assert run.returncode == 0, run.stderr[-2000:]
        results = [json.loads(run.stdout) for run in runs]
        # The second deploy waited for the first and swapped into its server.
        assert sorted(r["action"] for r in results) == ["created", "reloaded"]
        assert len({r["details"]["pid"] for r in results}) == 1
        state = deploy.read_state(name)
        assert _servers(name) == [state.pid]
        assert deploy.ping(state.url)["model_version"] == "2"

        gone = invoke("undeploy", name)
        assert gone.exit_code == 0, gone.stderr
        deadline = time.monotonic() + 15
        while _servers(name) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _servers(name) == []
        assert deploy.read_state(name) is None
    finally:
        for pid in _servers(name):  # orphans of a failed run
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
