"""Categorical columns inside the model, end to end (issue 16). A missing value is the level
``Unknown``; a level the model never saw is answered (no indicator set) and counted, never
refused; the one-hot form of the request is a 400 naming the raw column.

Default suite: a hand-made format-2 chain served by a real endpoint process, through the stock
boto3 sagemaker-runtime client. Slow: one model trained with ``features.categorical=onehot``
on a table with a text column ``region`` (some cells empty), then the raw values through every
path that takes rows: the local endpoint deployed from the registry (JSON records, instances
and CSV; training rows get their training labels), the registered pyfunc model, `popseg score`
and the drift monitor. One model for the whole module."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from botocore.exceptions import ClientError

from flows import deploy as deploy_flow
from tasks.config import load_params
from tasks.deploy import local as deploy
from tests.serving_contract import invoke_json, runtime_client

NAME = "regions"
slow = pytest.mark.slow
LEVELS = ["MW", "NE", "S"]
OVERRIDES = [
    "features.categorical=onehot",
    "evaluate.bootstrap_rounds=5",
    "cluster.k_max=5",
]


def _table(n_per: int, seed: int) -> pd.DataFrame:
    """Three groups, each with its own region (a few cells empty) and numeric centre."""
    rng = np.random.default_rng(seed)
    parts = []
    for group, region in enumerate(LEVELS):
        regions = np.array([region] * n_per, dtype=object)
        regions[rng.random(n_per) < 0.1] = None
        parts.append(
            pd.DataFrame(
                {
                    "income": 30.0 + 25.0 * group + rng.normal(scale=2.0, size=n_per),
                    "age": 30.0 + 10.0 * group + rng.normal(scale=1.5, size=n_per),
                    "region": regions,
                }
            )
        )
    frame = pd.concat(parts, ignore_index=True)
    frame.insert(0, "customer", [f"c{i:04d}" for i in range(len(frame))])
    return frame


@pytest.fixture(scope="module")
def project(prefect_server, tmp_path_factory):
    """The trained model (version 1, champion) and a local endpoint serving it."""
    from flows.training import training_flow
    from tests.conftest import ROOT

    root = tmp_path_factory.mktemp("categorical")
    (root / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    _table(40, seed=3).to_csv(root / "customers.csv", index=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        params = load_params("params.yaml", [f"data.path={root / 'customers.csv'}", *OVERRIDES])
        trained = training_flow(params, True)
        result = deploy_flow.deploy(params, endpoint_name=NAME)
        state = deploy.read_state(NAME)
        try:
            yield {
                "root": root,
                "params": params,
                "trained": trained,
                "state": state,
                "deploy": result,
            }
        finally:
            deploy._stop_process(state.pid, state.name)


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory):
    """`tests.chains.categorical_chain` served by a real endpoint process."""
    from tests.chains import categorical_chain
    from tests.reliability.endpoint_process import start_endpoint, stop_endpoint

    folder = tmp_path_factory.mktemp("categorical-endpoint")
    categorical_chain().save(str(folder / "model"))
    endpoint = start_endpoint(folder, folder / "model")
    yield endpoint.runtime_client()
    stop_endpoint(endpoint)


def test_local_endpoint_takes_raw_category_values(hand_made):
    from tests.reliability.endpoint_process import NAME as SERVED

    def invoke(body, content_type="application/json"):
        return invoke_json(hand_made, SERVED, body, content_type)

    records = [{"x": 0, "region": "NE"}, {"x": 0, "region": "MW"}, {"x": 9, "region": None}]
    reply = invoke(json.dumps(records))
    assert [p["closest_cluster"] for p in reply["predictions"]] == [1, 0, 2]
    assert "unseen_categories" not in reply
    csv_reply = invoke(b"region,x\nNE,0\nMW,0\n,9\n", "text/csv")
    assert csv_reply == reply
    # Unseen levels: answered (no indicator set: 1 from centroids 0 and 1) and counted.
    unseen = invoke(
        json.dumps({"instances": [{"features": [0, "Atlantis"]}, [0, "Mu"], [0, "NE"]]})
    )
    assert [p["closest_cluster"] for p in unseen["predictions"]] == [0, 0, 1]
    assert unseen["predictions"][0]["distance_to_cluster"] == pytest.approx(1.0)
    assert unseen["unseen_categories"] == {"region": 2}
    with pytest.raises(ClientError) as refused:
        invoke(b"0,0,1,0\n", "text/csv")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert (
        "one-hot indicators are not taken: send the raw value of region"
        in (refused.value.response["Error"]["Message"])
    )


def test_invoke_rows_sends_raw_records(hand_made):
    """`invoke_rows` (what `flows.deploy.invoke_rows` calls on either target) sends the raw
    values as a client must: a category's level, a missing one as null; an unseen level is
    answered."""
    from tasks.deploy.contract import invoke_rows
    from tests.reliability.endpoint_process import NAME as SERVED

    records = [
        {"x": 0, "region": "NE"},
        {"x": 0.0, "region": "MW"},
        {"x": float("nan"), "region": None},
        {"x": 9, "region": None},
        {"x": 0, "region": "Atlantis"},
    ]
    predictions = invoke_rows(hand_made, SERVED, records)
    assert [p["closest_cluster"] for p in predictions] == [1, 0, 0, 2, 0]


def _invoke(client, body, content_type):
    return invoke_json(client, NAME, body, content_type)


def _pyfunc(project):
    return mlflow.pyfunc.load_model(f"models:/{project['trained'].model_name}/1")


@slow
def test_the_chain_stores_the_levels_and_takes_raw_columns(project):
    from tasks.register import load_chain

    chain = load_chain(project["trained"].run_id)
    assert chain.categories == {"region": [*LEVELS, "Unknown"]}
    assert chain.input_columns == ["income", "age", "region"]
    assert project["deploy"].smoke_test["passed"]  # smoke rows sent with raw levels


@slow
def test_endpoint_takes_raw_values_unseen_and_missing_levels(project):
    client = runtime_client(project["state"].url)
    frame = _table(40, seed=3)
    records = frame[["income", "age", "region"]].head(60)
    # Raw values as JSON records (null = missing) and as CSV with a header: same answers,
    # equal to the pyfunc's on the same rows.
    body = records.astype(object).where(records.notna(), None).to_dict(orient="records")
    as_json = _invoke(client, json.dumps(body), "application/json")
    as_csv = _invoke(client, records.to_csv(index=False), "text/csv")
    assert as_json == as_csv
    assert "unseen_categories" not in as_json
    expected = _pyfunc(project).predict(records)
    assert [p["closest_cluster"] for p in as_json["predictions"]] == expected[
        "closest_cluster"
    ].tolist()
    np.testing.assert_allclose(
        [p["distance_to_cluster"] for p in as_json["predictions"]],
        expected["distance_to_cluster"],
        rtol=1e-9,
    )
    # An unseen level and a missing value are answered; the unseen one is counted.
    odd = {
        "instances": [
            {"features": [55.0, 40.0, "Atlantis"]},
            {"income": 55.0, "age": 40.0},
            {"income": 55.0, "age": 40.0, "region": "NE"},
        ]
    }
    reply = _invoke(client, json.dumps(odd), "application/json")
    assert len(reply["predictions"]) == 3
    assert reply["unseen_categories"] == {"region": 1}
    # The one-hot request form is refused with the raw column to send instead.
    with pytest.raises(ClientError) as refused:
        _invoke(client, json.dumps([{"income": 1, "age": 1, "region=NE": 1}]), "application/json")
    error = refused.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "send the raw value of the categorical column 'region'" in error["Error"]["Message"]
    # A numeric column given text is still a 400 naming the column.
    with pytest.raises(ClientError, match="feature 'age': 'old' is not a number"):
        _invoke(client, b"income,age,region\n50,old,NE\n", "text/csv")


@slow
def test_endpoint_answers_training_rows_as_training_labelled_them(project):
    """The endpoint's encoding of raw values agrees with training's: each training row's
    segment is the one the run assigned it."""
    run_id = project["trained"].run_id
    assignments = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="reports/assignments.csv")
    )
    frame = _table(40, seed=3)
    reply = _invoke(
        runtime_client(project["state"].url),
        frame.drop(columns="customer").to_csv(index=False),
        "text/csv",
    )
    labels = assignments.set_index(assignments.columns[0])["segment"]
    assert [p["closest_cluster"] for p in reply["predictions"]] == labels.loc[
        frame["customer"]
    ].tolist()


@slow
def test_flows_invoke_rows_takes_a_table_of_raw_values(project):
    """`flows.deploy.invoke_rows` on the deployed endpoint: a table with text categories and
    empty cells gets the pyfunc model's answers."""
    rows = _table(40, seed=3)[["income", "age", "region"]].head(8)
    rows.loc[rows.index[1], "region"] = "Atlantis"
    rows.loc[rows.index[2], "income"] = np.nan
    predictions = deploy_flow.invoke_rows(NAME, rows)
    expected = _pyfunc(project).predict(rows)
    assert [p["closest_cluster"] for p in predictions] == expected["closest_cluster"].tolist()
    np.testing.assert_allclose(
        [p["distance_to_cluster"] for p in predictions],
        expected["distance_to_cluster"],
        rtol=1e-9,
    )


@slow
def test_pyfunc_signature_takes_text_columns(project):
    model = _pyfunc(project)
    inputs = {spec.name: spec.type.name for spec in model.metadata.get_input_schema().inputs}
    assert inputs == {"income": "double", "age": "double", "region": "string"}
    scored = model.predict(
        pd.DataFrame({"income": [30.0, 80.0], "age": [30.0, 50.0], "region": ["MW", "Atlantis"]})
    )
    assert len(scored) == 2 and np.isfinite(scored["distance_to_cluster"]).all()


@slow
def test_score_and_monitor_take_raw_values(project, tmp_path):
    from flows.scoring import score
    from tasks.monitor import compute_drift, load_monitored_model, read_monitor_data

    new = _table(30, seed=9)
    new.loc[:9, "region"] = "Atlantis"
    path = tmp_path / "new.csv"
    new.to_csv(path, index=False)
    params = project["params"]
    payload = score(params, str(path), str(tmp_path / "scores.csv"), None, "memory", None)
    assert payload["rows"] == len(new) and payload["unseen_categories"] == {"region": 10}
    scores = pd.read_csv(tmp_path / "scores.csv")
    expected = _pyfunc(project).predict(new[["income", "age", "region"]])
    assert scores["segment"].tolist() == expected["closest_cluster"].tolist()
    # Monitoring: the region shares moved (a tenth of the rows unseen) -> a drift reason.
    monitored = load_monitored_model(params.register_.model_name, None)
    data = read_monitor_data(str(path), monitored.chain)
    report = compute_drift(monitored.chain, monitored.reference, data.values, params.monitor)
    region = next(f for f in report.features if f.name == "region")
    assert region.levels["(unseen)"] == (0.0, pytest.approx(10 / 90))
    assert region.drifted
    assert "region=NE" not in [f.name for f in report.features]
