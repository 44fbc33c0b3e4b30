"""What the MLflow UI shows of a training and a monitoring, read back from a real store (the
session's two trained crime models): the experiment marked as model training, the training
data as the run's dataset input, the Prefect flow run, the input schema, the gate's decision
as the version's description, and monitoring runs in their own experiment, linked from the
version and still found by the report and lineage."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.models import get_model_info

from tasks import lineage, report
from tasks.ingest import load_crime
from tasks.register import configure_mlflow

MODEL = "popseg-segmentation"
FEATURES = ["Murder", "Assault", "UrbanPop", "Rape", "Density"]


@pytest.fixture
def client(trained_project):
    configure_mlflow()
    return mlflow.MlflowClient()


def test_training_run_shows_its_data_flow_run_and_metrics(client, trained_store):
    experiment = client.get_experiment_by_name("popseg")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    version = client.get_model_version(MODEL, "2")
    run = client.get_run(version.run_id)
    # The dataset input: name, the DVC md5 as digest, the file as source, doubles.
    (dataset_input,) = run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert dataset.name == "crime" and dataset.digest == run.data.tags["data_md5"]
    assert dataset.source_type == "local"
    # (the store was trained in its own folder, which the data was ingested to)
    raw_copy = (trained_store["dir"] / "data" / "raw" / "crime.csv").resolve()
    assert json.loads(dataset.source) == {"uri": str(raw_copy)}
    assert {tag.key: tag.value for tag in dataset_input.tags} == {"mlflow.data.context": "training"}
    assert '{"type": "double", "name": "Assault", "required": true}' in dataset.schema
    # The Prefect flow run that trained it, with its page on the session's Prefect server.
    flow_run_id = run.data.tags["prefect_flow_run_id"]
    assert run.data.tags["prefect_flow_run_url"].startswith("http://127.0.0.1:")
    assert run.data.tags["prefect_flow_run_url"].endswith(f"/flow-runs/flow-run/{flow_run_id}")
    # The chosen k's metrics are the parent run's (the runs table's metric columns).
    assert run.data.metrics["k"] == int(version.tags["k"])
    assert {"silhouette", "stability", "inertia", "davies_bouldin"} <= set(run.data.metrics)


def test_model_has_a_double_input_schema(client, trained_project):
    signature = get_model_info(f"models:/{MODEL}/2").signature
    assert signature.inputs.input_names() == FEATURES
    assert {spec.type.name for spec in signature.inputs.inputs} == {"double"}
    assert [spec.name for spec in signature.outputs.inputs] == [
        "closest_cluster",
        "distance_to_cluster",
    ]
    # Float input passes MLflow's schema check (integer columns are converted by the caller).
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/2")
    predicted = model.predict(load_crime()[FEATURES].astype(float).head(5))
    assert len(predicted) == 5


def test_versions_describe_the_gate_decision(client):
    first, second = (client.get_model_version(MODEL, v) for v in ("1", "2"))
    assert first.description.startswith("Promotion gate passed:\n- silhouette ")
    assert "\n- no current champion" in first.description
    assert second.description.startswith("Promotion gate passed:\n")
    assert "- not worse than the champion on the same data: silhouette " in second.description
    # The description lists the same reasons as the gate's tag.
    listed = second.description.split("\n")[1:]
    assert [line.removeprefix("- ") for line in listed] == second.tags["gate_reasons"].split("; ")


def test_refused_gate_is_described(client, trained_project):
    from tasks.config import load_params
    from tasks.promote import promote

    strict = load_params("params.yaml", ["promote.min_silhouette=0.99"]).promote
    decision = promote(MODEL, "1", strict)
    assert not decision.passed
    description = client.get_model_version(MODEL, "1").description
    assert description.startswith("Promotion gate refused:\n- silhouette ")
    assert "< promote.min_silhouette 0.99" in description
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "2"


def test_monitoring_runs_have_their_own_experiment(client, trained_project):
    from flows.monitoring import monitor_flow
    from tasks.config import load_params

    path = trained_project / "crime-new.csv"
    load_crime().to_csv(path, index=False)
    outcome = monitor_flow(load_params("params.yaml"), str(path))
    monitoring = client.get_experiment_by_name(f"{MODEL}-monitoring")
    assert monitoring.tags["mlflow.experimentKind"] == "custom_model_development"
    run = client.get_run(outcome.monitor_run_id)
    assert run.info.experiment_id == monitoring.experiment_id == outcome.experiment_id
    assert run.info.run_name == "monitor-v2"
    training = client.get_experiment_by_name("popseg")
    assert (
        client.search_runs(
            [training.experiment_id], filter_string="tags.`popseg.run_type` = 'monitor'"
        )
        == []
    )
    tags = client.get_model_version(MODEL, "2").tags
    assert tags["last_monitor_run_id"] == outcome.monitor_run_id
    assert tags["monitoring_experiment"] == f"{MODEL}-monitoring"
    assert tags["monitoring_experiment_id"] == monitoring.experiment_id
    # The readers still find it: the report's drift history, lineage of the version.
    gathered = report.gather(MODEL, "2", "popseg")
    assert [item.run_id for item in gathered.monitoring] == [outcome.monitor_run_id]
    assert gathered.monitoring[0].drift is False
    assert lineage.lineage(MODEL, "2").run_id == client.get_model_version(MODEL, "2").run_id
