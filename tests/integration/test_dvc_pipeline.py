"""DVC on a temporary clone of the project: `dvc repro` reproduces the committed pipeline,
experiments compare, data round-trips through a local and an S3 (moto) remote, and
`popseg lineage --restore` brings back the exact bytes a model version was trained on.

What "reproduces" means on any x86-64 CPU is in tests/dvc_reproduction.py: the lock's
commands, params and deps exactly, the float outputs of `prepare` and `train` by value.
Remotes are checked against what the same clone pushed, never against the hashes of the
committed lock (another CPU writes other bytes for those outputs)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.dvc_reproduction import (
    BIN,
    ROUNDED_REPORTS,
    assert_lock_agrees,
    assert_reports_agree,
    clone_project,
    commit_reproduction,
    committed_text,
    dvc,
    dvc_tracked_files,
    env,
    run,
)


def popseg(*args: str, cwd: Path, check: bool = True):
    return run([str(BIN / "popseg"), *args], cwd, check=check)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """A fresh clone after `dvc repro` (~40 s: four stage processes, the full k sweep)."""
    project = clone_project(tmp_path_factory.mktemp("dvc") / "popseg")
    commit = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    committed_lock = (project / "dvc.lock").read_text()
    result = dvc("repro", cwd=project)
    return {"dir": project, "commit": commit, "committed_lock": committed_lock, "repro": result}


@pytest.fixture(scope="module")
def pushed_from(reproduced):
    """The reproduction committed (dvc.lock, metrics, plots), as a teammate would before
    `dvc push`: a clone of it names the outputs this machine produced and pushed."""
    commit_reproduction(reproduced["dir"], "reproduced")
    return reproduced["dir"]


def test_repro_on_a_fresh_clone_reproduces_the_committed_pipeline(reproduced):
    project = reproduced["dir"]
    output = reproduced["repro"].stdout
    # Stages whose outputs are missing from a clone run; validate's outputs are committed
    # (small, in git) and its inputs came out identical, so DVC skips it.
    for stage in ("ingest", "prepare", "train"):
        assert f"Running stage '{stage}'" in output
    assert "Stage 'validate' didn't change, skipping" in output
    assert "Data and pipelines are up to date." in dvc("status", cwd=project).stdout
    # Same data, params and code -> the lock committed on main, but for the hashes of the
    # float outputs, which depend on the CPU's BLAS/numba kernels.
    assert_lock_agrees((project / "dvc.lock").read_text(), reproduced["committed_lock"])
    # Those outputs by value: the committed metrics and plot series (kept in git).
    assert_reports_agree(
        {path: (project / path).read_text() for path in ROUNDED_REPORTS},
        {path: committed_text(project, reproduced["commit"], path) for path in ROUNDED_REPORTS},
    )
    metrics = json.loads((project / "metrics" / "train.json").read_text())
    assert metrics["k"] >= 2 and 0 < metrics["silhouette"] <= 1
    assert {"inertia", "calinski_harabasz", "davies_bouldin", "stability"} <= set(metrics)
    raw = project / "data" / "raw" / "crime.csv"
    assert raw.read_text().splitlines()[0].split(",")[0] == "State"
    assert sorted(p.name for p in (project / "models" / "chain").iterdir()) == [
        "chain.json",
        "chain.npz",
    ]
    images = {p.name for p in (project / "plots" / "images").iterdir()}
    assert {"elbow_inertia_by_k.png", "centroid_heatmap.png"} <= images
    assert "registered popseg-segmentation v1" in output


def test_lineage_names_the_dvc_hash_commit_and_params(reproduced):
    project = reproduced["dir"]
    record = json.loads(popseg("lineage", "1", "--json", cwd=project).stdout)
    raw = project / "data" / "raw" / "crime.csv"
    assert record["data_md5"] == md5(raw)
    assert record["data_path"] == "data/raw/crime.csv"
    assert record["git_commit"].removesuffix("-dirty") == reproduced["commit"]
    assert record["params"]["cluster.k_max"] == "12"
    # DVC's own hash of the file is the one recorded.
    import yaml

    lock = yaml.safe_load((project / "dvc.lock").read_text())
    raw_dir_md5 = lock["stages"]["ingest"]["outs"][0]["md5"]
    manifest = project / ".dvc" / "cache" / "files" / "md5" / raw_dir_md5[:2] / raw_dir_md5[2:]
    entries = json.loads(manifest.read_text())
    assert entries == [{"md5": record["data_md5"], "relpath": "crime.csv"}]
    text = popseg("lineage", "1", cwd=project).stdout
    assert record["data_md5"] in text and "cluster.k_max = 12" in text


def test_lineage_restores_the_exact_bytes_from_the_cache_and_the_remote(reproduced, tmp_path):
    project = reproduced["dir"]
    original = (project / "data" / "raw" / "crime.csv").read_bytes()
    restored = json.loads(popseg("lineage", "1", "--restore", "--json", cwd=project).stdout)
    assert restored["restored"] == "data/restored/v1/crime.csv"
    assert not list(project.glob(".popseg-restore-*.dvc"))
    assert (project / restored["restored"]).read_bytes() == original
    outside = popseg(
        "lineage", "1", "--restore", "--output", "/tmp/x.csv", cwd=project, check=False
    )
    assert outside.returncode == 3 and "must be inside the project" in outside.stderr
    # From the remote alone: push, empty the cache, restore elsewhere.
    dvc("push", cwd=project)
    cache = project / ".dvc" / "cache"
    shutil.move(cache, tmp_path / "cache")
    try:
        target = project / "elsewhere" / "crime.csv"
        popseg("lineage", "1", "--restore", "--output", str(target), cwd=project)
        assert target.read_bytes() == original
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.move(tmp_path / "cache", cache)
    # A version that does not exist is named in the error; nothing is written.
    missing = popseg("lineage", "99", "--restore", cwd=project, check=False)
    assert missing.returncode == 5 and "no version '99'" in missing.stderr
    assert not (project / "data" / "restored" / "v99").exists()


def test_push_then_pull_into_a_fresh_clone_round_trips_the_data(pushed_from, tmp_path):
    project = pushed_from
    dvc("push", cwd=project)
    fresh = tmp_path / "popseg"
    run(["git", "clone", "-q", str(project), str(fresh)], tmp_path)
    # The clone's default remote is the sibling folder ../popseg-dvc-remote: point it at the
    # one the project pushed to.
    remote = (project.parent / "popseg-dvc-remote").resolve()
    dvc("remote", "modify", "--local", "local", "url", str(remote), cwd=fresh)
    dvc("pull", cwd=fresh)
    pushed = dvc_tracked_files(project)
    assert {"data/raw/crime.csv", "data/prepared/prepared.npz", "models/chain/chain.npz"} <= set(
        pushed
    )
    assert dvc_tracked_files(fresh) == pushed
    for name in pushed:
        assert (fresh / name).read_bytes() == (project / name).read_bytes(), name
    assert "Data and pipelines are up to date." in dvc("status", cwd=fresh).stdout


def test_s3_remote_on_moto_round_trips_the_data(pushed_from, moto_s3, tmp_path):
    import boto3

    project = pushed_from
    boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket="popseg-dvc")
    # Only the remote's endpointurl setting points DVC at moto.
    environment = env()
    environment.pop("AWS_ENDPOINT_URL", None)
    dvc("remote", "modify", "--local", "s3", "endpointurl", moto_s3, cwd=project)
    dvc("push", "-r", "s3", cwd=project, environment=environment)
    keys = [
        item["Key"]
        for item in boto3.client("s3", endpoint_url=moto_s3).list_objects_v2(
            Bucket="popseg-dvc", Prefix="store/"
        )["Contents"]
    ]
    raw_md5 = md5(project / "data" / "raw" / "crime.csv")
    assert f"store/files/md5/{raw_md5[:2]}/{raw_md5[2:]}" in keys

    fresh = tmp_path / "popseg"
    run(["git", "clone", "-q", str(project), str(fresh)], tmp_path)
    dvc("remote", "modify", "--local", "s3", "endpointurl", moto_s3, cwd=fresh)
    dvc("pull", "-r", "s3", cwd=fresh, environment=environment)
    pushed = dvc_tracked_files(project)
    assert dvc_tracked_files(fresh) == pushed
    for name in pushed:
        assert (fresh / name).read_bytes() == (project / name).read_bytes(), name
    status = dvc("status", cwd=fresh, environment=environment).stdout
    assert "Data and pipelines are up to date." in status


def test_stages_refuse_to_run_out_of_order(tmp_path):
    project = tmp_path / "p"
    project.mkdir()
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    validate = popseg("stage", "validate", cwd=project, check=False)
    assert validate.returncode == 3
    assert "data/raw/crime.csv: no ingested data" in validate.stderr
    popseg("stage", "ingest", cwd=project)
    prepare = popseg("stage", "prepare", cwd=project, check=False)
    assert prepare.returncode == 3
    assert "reports/validation.json: missing" in prepare.stderr
    # A validation failure is recorded and stops the pipeline with the reasons.
    failed = popseg("stage", "validate", "-S", "validate.max_rows=10", cwd=project, check=False)
    assert failed.returncode == 4 and "data validation failed" in failed.stderr
    summary = json.loads((project / "metrics" / "validation.json").read_text())
    assert summary["success"] is False and summary["failed_expectations"] >= 1
    blocked = popseg("stage", "prepare", cwd=project, check=False)
    assert blocked.returncode == 4 and "failed validation" in blocked.stderr
    assert not (project / "data" / "prepared").exists()


def test_experiment_runs_and_compares_with_the_baseline(reproduced):
    """Last in this module: it changes the clone's workspace and its history."""
    project = reproduced["dir"]
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "reproduced", "--allow-empty"], project)
    # k in 3..4: the baseline's k (2 on crime) is out of range, so the metrics differ.
    dvc("exp", "run", "-n", "kmax4", "-S", "cluster.k_min=3", "-S", "cluster.k_max=4", cwd=project)
    shown = json.loads(dvc("exp", "show", "--json", cwd=project).stdout)
    experiments = [
        exp
        for entry in shown
        for exp in (entry.get("experiments") or [])
        for rev in exp.get("revs", [])
        if rev.get("name") == "kmax4"
    ]
    assert experiments, shown
    revision = experiments[0]["revs"][0]["data"]
    assert revision["params"]["params.yaml"]["data"]["cluster"]["k_max"] == 4
    exp_metrics = revision["metrics"]["metrics/train.json"]["data"]
    assert 3 <= exp_metrics["k"] <= 4
    table = dvc("exp", "show", "--no-pager", "--md", cwd=project).stdout
    assert "kmax4" in table and "cluster.k_max" in table
    diff = json.loads(dvc("metrics", "diff", "HEAD", "--json", cwd=project).stdout)
    train_diff = diff["metrics/train.json"]
    assert train_diff["k"]["new"] == exp_metrics["k"]
    assert "silhouette" in train_diff
    params_diff = json.loads(dvc("params", "diff", "HEAD", "--json", cwd=project).stdout)
    assert params_diff["params.yaml"]["cluster.k_max"] == {"old": 12, "new": 4, "diff": -8}
