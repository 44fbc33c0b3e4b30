"""`popseg train --set cluster.model=gmm`, then `popseg score` and a local endpoint: the
Gaussian-mixture model chosen by BIC answers alike through score, the endpoint, the
registered pyfunc model and the training's own assignments; its report says what was fitted,
shows the BIC curve and how sure the assignments are (slow: a whole training)."""

from __future__ import annotations

import json
import urllib.request

import mlflow
import numpy as np
import pandas as pd
import pytest

from tests.e2e.helpers import invoke

MODEL = "popseg-segmentation"
TRAIN_GMM = [
    "cluster.model=gmm",
    "cluster.covariance=diag",
    "cluster.k_max=4",
    "cluster.n_init=2",
    "evaluate.bootstrap_rounds=3",
    "promote.min_silhouette=0",
    "promote.min_stability=0",
]


def _json(result):
    assert result.exit_code == 0, result.stderr + result.stdout
    return json.loads(result.stdout)


@pytest.mark.slow
def test_gmm_train_score_and_endpoint_agree(prefect_server, project_dir):
    from tasks.ingest import load_crime

    frame = load_crime()
    frame.to_csv(project_dir / "crime.csv", index=False)
    sets = [part for item in TRAIN_GMM for part in ("--set", item)]
    trained = _json(invoke("train", "--data", "crime.csv", *sets, "--json"))
    assert trained["criterion"] == "bic" and trained["promoted"]
    assert trained["selection_reason"].startswith(f"k={trained['k']}: lowest BIC")
    assert "bic" in trained["metrics"] and "log_likelihood" in trained["metrics"]

    scored = _json(invoke("score", "--data", "crime.csv", "--output", "scores.csv", "--json"))
    scores = pd.read_csv(project_dir / "scores.csv")
    assert list(scores.columns) == [
        "State",
        "segment",
        "distance_to_cluster",
        "membership_probability",
    ]
    assert scored["rows"] == 50 and scores["membership_probability"].between(0, 1).all()
    run_id = mlflow.MlflowClient().get_model_version(MODEL, "1").run_id
    assignments = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="reports/assignments.csv")
    )
    assert scores["segment"].tolist() == assignments["segment"].tolist()
    np.testing.assert_allclose(
        scores["distance_to_cluster"], assignments["distance_to_cluster"], rtol=1e-6
    )
    np.testing.assert_allclose(
        scores["membership_probability"], assignments["membership_probability"], rtol=1e-6
    )
    _assert_mixture_report(run_id, trained["k"], scores["membership_probability"])

    features = ["Murder", "Assault", "UrbanPop", "Rape", "Density"]
    rows = frame[features].astype("float64")
    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}/1").predict(rows)
    np.testing.assert_allclose(
        pyfunc["membership_probability"], scores["membership_probability"], rtol=1e-9
    )

    deployed = _json(invoke("deploy", "--endpoint-name", "gmm", "--json"))
    try:
        body = frame[features].head(5).to_csv(index=False).encode()
        request = urllib.request.Request(
            deployed["endpoint_url"] + "/endpoints/gmm/invocations",
            data=body,
            headers={"Content-Type": "text/csv", "Accept": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as reply:
            predictions = json.loads(reply.read())["predictions"]
    finally:
        assert invoke("undeploy", "gmm").exit_code == 0
    head = scores.head(5)
    assert [p["closest_cluster"] for p in predictions] == head["segment"].tolist()
    np.testing.assert_allclose(
        [p["distance_to_cluster"] for p in predictions], head["distance_to_cluster"], rtol=1e-6
    )
    np.testing.assert_allclose(
        [p["membership_probability"] for p in predictions],
        head["membership_probability"],
        rtol=1e-6,
    )


def _assert_mixture_report(run_id: str, k: int, probabilities: pd.Series) -> None:
    """The report the training logged: the family and covariance, the BIC curve that chose k
    and the membership-probability summary, equal to the scores' own figures."""
    from PIL import Image

    def artifact(path: str) -> str:
        return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)

    for plot in ("plots/bic_by_k.png", "plots/membership_probability.png"):
        with Image.open(artifact(plot)) as image:
            assert image.format == "PNG" and image.width > 300
    with open(artifact("reports/segments.json")) as handle:
        membership = json.load(handle)["membership"]
    assert membership["rows"] == len(probabilities)
    below = float((probabilities < 0.8).mean())
    assert membership["share_below_0.8"] == pytest.approx(below, abs=1e-9)
    assert membership["mean"] == pytest.approx(probabilities.mean(), rel=1e-6)
    with open(artifact("reports/report.html"), encoding="utf-8") as handle:
        html = handle.read()
    assert "Gaussian mixture (diag covariance), chosen by bic" in html
    assert "<td>Gaussian mixture (diag covariance)</td>" in html
    curves = html[html.index('id="choosing-k"') : html.index('id="membership"')]
    assert curves.index('alt="BIC by k"') < curves.index('alt="Silhouette by k"')
    assert f"k={k}: lowest BIC" in curves
    certainty = html[html.index('id="membership"') : html.index('id="stability"')]
    assert f"<strong>{below:.0%}</strong> of them are below 0.8" in certainty
    assert 'alt="How sure the assignments are"' in certainty
