"""popseg without its optional extras (`dask`, `aws`, `dvc`, `team`), in `popseg` processes
whose imports of those packages are refused (a meta-path finder, as if they were not
installed): every module of flows/ and tasks/ imports; each command that needs an extra fails
with the one line naming it and exit code 15, in text and --json modes; the main job trains on the bundled crime data and serves it on a
local endpoint (slow). The real minimal install (a fresh venv, `pip install popseg`) is
`test_minimal_install.py`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.extras import EXTRAS
from tests.conftest import TRAIN_FAST

# Every module of every extra, and what only they pull in.
REFUSED = sorted({*(m for modules in EXTRAS.values() for m in modules), "dvc_s3", "bokeh"})

REFUSE_EXTRAS = f"""
import sys

class RefuseExtras:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {REFUSED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, RefuseExtras())
"""

# One interpreter (imports paid once) imports every module of flows/ and tasks/ (none may
# import an extra's package at import time), then runs the commands in turn.
COMMANDS_WITHOUT_EXTRAS = (
    REFUSE_EXTRAS
    + """
import importlib, json, pkgutil
import flows, tasks
unimportable = []
for package in (flows, tasks):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if module.name.endswith(".__main__"):  # `python -m flows.cli` runs the CLI
            continue
        try:
            importlib.import_module(module.name)
        except ImportError as error:
            unimportable.append(f"{module.name}: {error}")
from typer.testing import CliRunner
from flows.cli import app
results = []
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(app, args, prog_name="popseg")
    results.append([result.exit_code, result.stdout, result.stderr])
print(json.dumps({"unimportable": unimportable, "results": results}))
"""
)

POPSEG_WITHOUT_EXTRAS = (
    REFUSE_EXTRAS
    + """
sys.argv[0] = "popseg"
from flows.cli import app
app()
"""
)

NEEDS_AN_EXTRA = [
    (
        ["score", "--data", "data/raw/crime.csv", "--output", "s.csv", "--engine", "dask"],
        "popseg score --engine dask needs the 'dask' extra: pip install 'popseg[dask]'",
    ),
    (
        ["deploy", "--target", "sagemaker", "--endpoint-name", "crime"],
        "popseg deploy --target sagemaker needs the 'aws' extra: pip install 'popseg[aws]'",
    ),
    (
        ["score", "--target", "sagemaker", "--data", "s3://b/in.csv", "--output", "s3://b/out/"],
        "popseg score --target sagemaker needs the 'aws' extra: pip install 'popseg[aws]'",
    ),
    (
        ["train", "--data", "s3://bucket/crime.csv"],
        "popseg train: s3://bucket/crime.csv needs the 'aws' extra: pip install 'popseg[aws]'",
    ),
    (
        ["lineage", "1", "--restore"],
        "popseg lineage --restore needs the 'dvc' extra: pip install 'popseg[dvc]'",
    ),
]


def _env(cwd: Path) -> dict[str, str]:
    """A user's environment: the project's MLflow store, popseg's own Prefect server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "PREFECT_HOME"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{cwd / 'mlflow.db'}"
    return env


def _without_extras(code: str, args: list[str], cwd: Path, timeout: int):
    """``code`` (one of the programs above) with ``args``, in a fresh interpreter in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=_env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_modules_import_and_commands_name_the_missing_extra(trained_project):
    runs = [args for args, _ in NEEDS_AN_EXTRA]
    runs.append(NEEDS_AN_EXTRA[0][0] + ["--json"])
    probe = _without_extras(COMMANDS_WITHOUT_EXTRAS, [json.dumps(runs)], trained_project, 300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    assert seen["unimportable"] == []
    results = seen["results"]
    for (code, _, stderr), (_, message) in zip(results, NEEDS_AN_EXTRA, strict=False):
        said = [line for line in stderr.splitlines() if line.startswith("error")]
        assert (code, said) == (15, [f"error: {message}"]), stderr[-2000:]
    code, stdout, _ = results[-1]
    assert code == 15
    assert json.loads(stdout) == {
        "error": NEEDS_AN_EXTRA[0][1],
        "error_type": "MissingExtraError",
        "exit_code": 15,
    }


@pytest.mark.slow
def test_main_job_trains_and_serves_without_extras(project_dir):
    """`popseg run` on the bundled crime data: trained, registered, promoted, served on a local
    endpoint that answers the first training rows, stopped."""
    args = ["run", *[f"--set={s}" for s in TRAIN_FAST], "--json"]
    run = _without_extras(POPSEG_WITHOUT_EXTRAS, args, project_dir, 600)
    assert run.returncode == 0, run.stderr[-3000:]
    outcome = json.loads(run.stdout)
    assert outcome["model_version"] == "1" and outcome["promoted"] is True
    endpoint = outcome["endpoint"]
    assert endpoint["deployed"] is True and endpoint["stopped"] is True
    assert endpoint["smoke_test"]["passed"] is True
    assert len(endpoint["sample"]) == 5
