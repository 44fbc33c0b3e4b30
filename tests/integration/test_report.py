"""The segmentation report from a real MLflow store (the session's two trained crime models):
logged with every training, written by `popseg report`, drift history from monitoring runs,
and rendered by headless Chromium (screenshot kept as a test artifact)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest

from tasks import report
from tasks.register import configure_mlflow
from tests import browser
from tests.e2e.helpers import invoke

MODEL = "popseg-segmentation"
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "test-artifacts" / "report-screenshot.png"
EVIL = "<script>alert(1)</script>"


def _log_monitor_run(version: str, drift: bool, reasons: list[str], source: str) -> str:
    """A monitoring run as `popseg monitor` records it (tags, metrics, monitor/monitor.json)."""
    configure_mlflow()
    experiment = mlflow.get_experiment_by_name("popseg")
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name="monitor") as run:
        mlflow.set_tags(
            {
                "popseg.run_type": "monitor",
                "model_name": MODEL,
                "model_version": version,
                "data_source": source,
                "drift": str(drift).lower(),
            }
        )
        mlflow.log_metrics(
            {"drift": float(drift), "max_psi": 0.61 if drift else 0.04, "n_rows": 40}
        )
        mlflow.log_dict(
            {
                "drift": drift,
                "reasons": reasons,
                "features": {"Murder": {"psi": 0.61 if drift else 0.04}},
            },
            "monitor/monitor.json",
        )
    return run.info.run_id


def test_every_training_logs_its_report(trained_project, trained_store):
    client = mlflow.MlflowClient()
    for version, outcome in trained_store["versions"].items():
        run = client.get_run(outcome.run_id)
        assert "report_error" not in run.data.tags, run.data.tags["report_error"]
        assert not [note for note in outcome.notes if note.startswith("report not built")]
        local = mlflow.artifacts.download_artifacts(
            run_id=outcome.run_id,
            artifact_path=report.REPORT_ARTIFACT,
            dst_path=str(trained_project / version),
        )
        html = Path(local).read_text()
        assert f"{MODEL}, version {version}" in html
        for segment in outcome.sizes:
            assert f'id="segment-{segment}"' in html


def test_report_of_the_champion_by_default(trained_project, trained_store):
    data = report.gather(MODEL, None, "popseg")
    second = trained_store["versions"]["2"]
    assert data.model_version == "2" and "champion" in data.aliases
    assert [s.segment for s in data.segments] == sorted(second.sizes)
    assert sum(s.size for s in data.segments) == 50
    assert data.monitoring == []  # none logged in this store
    assert data.validation.recorded and data.validation.success and data.validation.failed == 0
    assert data.data_md5 == second.data_md5 and data.git_commit
    assert {
        "elbow_inertia_by_k",
        "silhouette_by_k",
        "centroid_heatmap",
        "pca_explained_variance",
    } <= set(data.images)
    # Population means in the profiles match evaluate's (size-weighted segment means).
    for segment in data.segments:
        for trait in segment.traits:
            compared = next(c for c in segment.comparisons if c.feature == trait["feature"])
            assert compared.population_mean == pytest.approx(trait["population_mean"])
            assert compared.z == pytest.approx(trait["z"])
        assert all(c.z is not None for c in segment.comparisons)  # sd from the logged data
    # Without a champion the latest version is reported.
    mlflow.MlflowClient().delete_registered_model_alias(MODEL, "champion")
    assert report.gather(MODEL, None).model_version == "2"
    assert report.gather(MODEL, "1").model_version == "1"


def test_cli_writes_the_report(trained_project):
    result = invoke("report", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["model_version"] == "2" and payload["monitoring_runs"] == 0
    default = trained_project / "reports" / "segmentation-report-v2.html"
    assert (
        Path(payload["report"]).resolve() == default.resolve() and default.stat().st_size > 50_000
    )
    nested = trained_project / "out" / "deeper" / "crime.html"
    result = invoke("report", "--model-version", "1", "--output", str(nested))
    assert result.exit_code == 0, result.output
    assert nested.is_file() and "version 1" in result.output
    assert "No monitoring runs yet for version 1" in nested.read_text()


def test_cli_bad_inputs(trained_project):
    result = invoke("report", "--model-version", "99")
    assert result.exit_code == 5
    assert f"model '{MODEL}' has no version 99" in result.output
    result = invoke("report", "--output", str(trained_project / "report.pdf"))
    assert result.exit_code == 10 and "ending in .html" in result.output
    assert not (trained_project / "report.pdf").exists()


def test_drift_history_from_monitoring_runs(trained_project):
    quiet = _log_monitor_run("2", False, [], "data/new/march.csv")
    drifted = _log_monitor_run("2", True, ["Murder: PSI 0.61 > 0.25", EVIL], "data/new/april.csv")
    _log_monitor_run("1", True, ["about version 1 only"], "data/new/old.csv")
    data = report.gather(MODEL, "2", "popseg")
    assert [record.run_id for record in data.monitoring] == [drifted, quiet]  # newest first
    latest = data.monitoring[0]
    assert latest.drift is True and latest.max_psi == pytest.approx(0.61) and latest.rows == 40
    assert latest.data_source == "data/new/april.csv" and EVIL in latest.reasons
    assert data.monitoring[1].drift is False and data.monitoring[1].reasons == []
    html = report.render_html(data)
    assert "2 monitoring runs" in html and "1 found drift" in html
    assert "Murder: PSI 0.61 &gt; 0.25" in html and "about version 1 only" not in html
    assert EVIL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_report_renders_in_headless_chromium(trained_project, tmp_path):
    chromium = browser.chromium()
    _log_monitor_run("2", True, ["Murder: PSI 0.61 > 0.25"], "data/new/april.csv")
    written = report.write_report(MODEL, None, tmp_path / "report.html", "popseg")
    html = written.path.read_text()
    n_images = len(written.data.images)
    # A copy with a probe script (the report itself has none): after load, count the images
    # the browser decoded.
    probe = tmp_path / "probe.html"
    probe.write_text(
        html.replace(
            "</body>",
            "<script>window.addEventListener('load', function () {"
            "var images = Array.prototype.slice.call(document.images);"
            "var decoded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; });"
            "document.body.setAttribute('data-images-decoded', decoded.length + '/' + images.length);"
            "});</script></body>",
        )
    )
    dom = browser.run_chromium(
        chromium,
        tmp_path / "profile-dom",
        "--dump-dom",
        "--virtual-time-budget=10000",
        probe.as_uri(),
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f'data-images-decoded="{n_images}/{n_images}"' in dom.stdout, dom.stdout[-500:]
    for segment in written.data.segments:
        assert f'id="segment-{segment.segment}"' in dom.stdout
    assert re.search(r"<h2>\s*Drift history\s*</h2>", dom.stdout)

    shot = tmp_path / "report-screenshot.png"
    result = browser.run_chromium(
        chromium,
        tmp_path / "profile-shot",
        f"--screenshot={shot}",
        "--window-size=1280,4000",
        written.path.as_uri(),
    )
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, SCREENSHOT)
    assert shot.stat().st_size > 50_000
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))[..., :3]
    assert pixels.shape[:2] == (4000, 1280)
    colours = np.unique((pixels.reshape(-1, 3) * 255).round().astype(np.uint8), axis=0)
    assert len(colours) > 200  # text, tables and embedded plots, not a blank page
    # The plots (strong green bars, red/blue heatmap cells) are in the first 4000 px.
    saturated = (pixels.max(axis=2) - pixels.min(axis=2)) > 0.4
    assert saturated.mean() > 0.005


def test_cli_with_no_registered_model(project_dir):
    result = invoke("report")
    assert result.exit_code == 5
    assert f"model '{MODEL}' has no registered versions" in result.output
