"""The `popseg` CLI: in-process (Typer's runner, on the session's Prefect test server) for the
many bad-input cases, and as real subprocesses for the main job's JSON contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tests.e2e.helpers import invoke, run_popseg

ROOT = Path(__file__).resolve().parents[2]


def _nothing_registered() -> bool:
    return mlflow.MlflowClient().search_registered_models() == []


BAD_FILES = {
    "missing": (None, "file not found"),
    "empty": (b"", "the file is empty"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "looks like a binary file"),
    "header_only": (b"name,x,y\n", "has a header but no data rows"),
    "ragged": (b"name,x,y\na,1,2\nb,3,4,5\n", "ragged rows: line 3 has 4 fields"),
    "delimiter": (b"name;x;y\na;1;2\nb;3;4\n", "wrong delimiter"),
    "duplicate_columns": (b"name,x,x\na,1,2\nb,3,4\n", "duplicate column name 'x'"),
    "text_in_numeric": (
        b"name,x,y\n"
        + b"".join(b"r%d,%d,%d\n" % (i, i, i * 2) for i in range(12)).replace(b"r5,5", b"r5,five"),
        "column 'x' is numeric but data row 6 holds text 'five'",
    ),
    "too_few_rows": (
        b"name,x,y\na,1,2\nb,3,4\nc,5,1\n",
        "expect_table_row_count_to_be_between failed (expected min_value=10); observed 3",
    ),
    "constant_column": (
        b"name,x,c\n" + b"".join(b"r%d,%d,7\n" % (i, i) for i in range(12)),
        "column 'c': expect_column_stdev_to_be_between failed",
    ),
    "all_missing_column": (
        b"name,x,m\n" + b"".join(b"r%d,%d,\n" % (i, i) for i in range(12)),
        "column 'm': expect_column_proportion_of_non_null_values_to_be_between failed",
    ),
    "inf": (
        b"name,x,y\n"
        + b"".join(b"r%d,%d,%d\n" % (i, i, i % 3) for i in range(11))
        + b"r99,inf,1\n",
        "column 'x': expect_column_values_to_be_between failed (expected finite values); e.g. [inf]",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_exit_nonzero_with_a_clear_message(prefect_server, project_dir, case):
    content, message = BAD_FILES[case]
    path = project_dir / f"{case}.csv"
    if content is not None:
        path.write_bytes(content)
    result = invoke("train", "--data", str(path))
    assert result.exit_code != 0
    assert message in result.stderr
    assert f"{case}.csv" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert _nothing_registered()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("cluster.k_mx=3", "unknown key cluster.k_mx"),
        ("cluster.k_max=many", "cluster.k_max"),
        ("cluster.k_min=5", "k_min (5) is greater than k_max (3)"),
        ("nosuch.key=1", "unknown section 'nosuch'"),
    ],
)
def test_bad_set_values(project_dir, small_csv, override, message):
    result = invoke(
        "train", "--data", str(small_csv), "--set", "cluster.k_max=3", "--set", override
    )
    assert result.exit_code == 2
    assert message in result.stderr
    assert _nothing_registered()


def test_train_json_and_promote(prefect_server, project_dir, small_csv):
    result = invoke(
        "train",
        "--data",
        str(small_csv),
        "--set",
        "cluster.k_max=5",
        "--set",
        "cluster.seed=2",
        "--no-promote",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["k"] == 2 and payload["promoted"] is False
    assert payload["model_version"] == "1"
    assert {"silhouette", "inertia"} <= set(payload["metrics"])
    assert sorted(s["size"] for s in payload["segments"]) == [15, 15]
    run = mlflow.MlflowClient().get_run(payload["run_id"])
    assert run.data.params["cluster.seed"] == "2" and run.data.params["cluster.k_max"] == "5"
    promoted = invoke("promote", "--json")
    assert promoted.exit_code == 0, promoted.stderr
    decision = json.loads(promoted.stdout)
    assert decision["promoted"] is True and decision["model_version"] == "1"
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("popseg-segmentation", "champion").version) == "1"
    again = invoke("promote", "--version", "1", "--json")
    assert json.loads(again.stdout)["reasons"] == ["version 1 is already the champion"]
    missing = invoke("promote", "--version", "7")
    assert missing.exit_code == 5 and "has no version 7" in missing.stderr


def test_promote_without_any_model(project_dir):
    result = invoke("promote")
    assert result.exit_code == 5
    assert "has no alias 'challenger'" in result.stderr


@pytest.mark.slow
def test_popseg_run_json_in_a_fresh_process(project_dir):
    """The main job as a user runs it: its own ephemeral Prefect server, JSON alone on stdout."""
    result = run_popseg(["run", "--json"], project_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout)  # stdout is exactly one JSON object
    assert payload["model_version"] == "1" and payload["promoted"] is True
    assert payload["n_rows"] == 50 and payload["data_source"].endswith("crime.csv")
    assert (project_dir / ".prefect").is_dir() and (project_dir / "mlflow.db").exists()
    summary = run_popseg(["run", "--dataset", "counties", "--set", "cluster.k_max=5"], project_dir)
    assert summary.returncode == 0, summary.stderr[-3000:]
    assert "Segments" in summary.stdout and "version 2" in summary.stdout


def test_bad_input_in_a_fresh_process_has_no_traceback(project_dir):
    bad = project_dir / "bad.csv"
    bad.write_text("a;b;c\n1;2;3\n")
    result = run_popseg(["train", "--data", str(bad), "--json"], project_dir)
    assert result.returncode == 3
    # stdout holds one JSON document, the error's; the message is on stderr as in text mode.
    document = json.loads(result.stdout)
    assert document["error_type"] == "DataError" and document["exit_code"] == 3
    assert "wrong delimiter? Use --set data.delimiter=';'" in document["error"]
    assert "wrong delimiter? Use --set data.delimiter=';'" in result.stderr
    assert "Traceback" not in result.stderr


def test_ui_serves_the_tracking_store(project_dir):
    import socket
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project_dir / 'mlflow.db'}"}
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("popseg")), "ui", "--port", str(port)],
        cwd=project_dir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                    assert reply.status == 200
                    break
            except OSError:
                assert process.poll() is None, process.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "MLflow UI did not come up"
                time.sleep(0.5)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search",
            data=b'{"max_results": 10}',
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            names = [e["name"] for e in json.loads(reply.read())["experiments"]]
        assert "Default" in names
    finally:
        import signal

        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
