"""`popseg monitor` through the CLI (in-process, Typer's runner) on a trained project: --json is
one JSON object on stdout, the readable summary, --fail-on-drift, and clear errors."""

from __future__ import annotations

import json

from tasks.ingest import load_crime
from tests.e2e.helpers import invoke


def test_monitor_json_text_and_exit_codes(trained_project):
    frame = load_crime()
    frame["Murder"] *= 3
    frame["Assault"] += 200
    frame.to_csv(trained_project / "drifted.csv", index=False)

    result = invoke("monitor", "--data", "drifted.csv", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("\n") == 1 and result.stdout.endswith("}\n")
    payload = json.loads(result.stdout)  # exactly one JSON object, nothing else on stdout
    assert payload["drift"] is True
    assert payload["model_name"] == "popseg-segmentation" and payload["model_version"] == "2"
    assert payload["data_source"] == "drifted.csv" and payload["n_rows"] == 50
    assert payload["monitor_run_id"] and payload["retrain"] is None
    assert set(payload["features"]) == {"Murder", "Assault", "UrbanPop", "Rape", "Density"}
    assert set(payload["features"]["Murder"]) >= {
        "psi",
        "missing_rate_ref",
        "missing_rate_new",
        "drifted",
    }
    assert {"segment", "ref_share", "new_share", "shift"} <= set(payload["segments"][0])
    assert any(reason.startswith("feature Murder: PSI") for reason in payload["reasons"])

    failing = invoke("monitor", "--data", "drifted.csv", "--json", "--fail-on-drift")
    assert failing.exit_code == 9 and json.loads(failing.stdout)["drift"] is True
    assert "drift detected" in failing.stderr

    text = invoke("monitor", "--data", "drifted.csv", "--model-version", "1")
    assert text.exit_code == 0, text.stderr
    assert "DRIFT" in text.stdout and "version 1" in text.stdout
    assert "feature Assault: PSI" in text.stdout and "monitoring run" in text.stdout

    load_crime().to_csv(trained_project / "same.csv", index=False)
    quiet = invoke("monitor", "--data", "same.csv", "--fail-on-drift", "--json")
    assert quiet.exit_code == 0 and json.loads(quiet.stdout)["drift"] is False


def test_monitor_errors_are_clear(trained_project):
    load_crime().drop(columns=["Density"]).to_csv(trained_project / "partial.csv", index=False)
    missing = invoke("monitor", "--data", "partial.csv", "--json")
    assert missing.exit_code == 3
    document = json.loads(missing.stdout)  # with --json the error is the one JSON document
    assert document["error_type"] == "DataError" and document["exit_code"] == 3
    assert "partial.csv: missing feature column(s) Density" in document["error"]
    assert "partial.csv: missing feature column(s) Density" in missing.stderr
    absent = invoke("monitor", "--data", "nope.csv")
    assert absent.exit_code == 3 and "nope.csv: file not found" in absent.stderr
    bad_key = invoke("monitor", "--data", "partial.csv", "--set", "monitor.psi=1")
    assert bad_key.exit_code == 2 and "unknown key monitor.psi" in bad_key.stderr
    for result in (missing, absent, bad_key):
        assert "Traceback" not in result.stderr + result.stdout
