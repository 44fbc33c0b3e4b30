"""Issue 13, deploy: endpoint names follow SageMaker's rule everywhere (refused before anything
is written), and two deploys to one name at the same moment end with one server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tasks.deploy import local as deploy
from tests import processes
from tests.conftest import ROOT
from tests.e2e.helpers import invoke


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
    """Live endpoint-server processes for ``name`` (as `tasks.deploy.local` recognises them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and deploy._pid_is_server(int(entry.name), name):
            with contextlib.suppress(OSError):
                if b"Z" not in (entry / "stat").read_bytes().split(b")")[-1][:3]:
                    found.append(int(entry.name))
    return found


# A real process running the deploy step itself; it waits at a start line (a file) after its
# imports, so both reach "read the state" within milliseconds of each other.
_RACER = """
import json, sys, time
from pathlib import Path
from tasks.deploy.local import deploy_local
from tasks.package import RegisteredChain
name, run_id, chain_dir, ready, go = sys.argv[1:]
registered = RegisteredChain("popseg-segmentation", "2", run_id, Path(chain_dir))
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.002)
print(json.dumps(deploy_local(name, registered, project=Path.cwd()).to_json()))
"""


def test_concurrent_deploys_end_with_one_tracked_server(trained_project, tmp_path_factory):
    from tasks.package import fetch_registered_chain

    name = "race"
    scratch = tmp_path_factory.mktemp("race")
    registered = fetch_registered_chain("popseg-segmentation", "2", scratch / "chain")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    go = scratch / "go"
    racers = [
        processes.start(
            [
                sys.executable,
                "-c",
                _RACER,
                name,
                registered.run_id,
                str(registered.chain_dir),
                str(scratch / f"ready-{i}"),
                str(go),
            ],
            trained_project,
            env,
        )
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all((scratch / f"ready-{i}").exists() for i in range(2)):
            assert time.monotonic() < deadline and all(r.poll() is None for r in racers)
            time.sleep(0.01)
        go.touch()
        results = [json.loads(out) for out in processes.outputs(racers, timeout=120)]
        # One started the server; the other waited for the lock and swapped into it.
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
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
        for pid in _servers(name):  # orphans of a failed run
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
