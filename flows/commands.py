"""What the `popseg` commands run when it is more than one call: the pre-flight checks before a
flow, the main job's serving step, serving the schedules, the MLflow UI. The CLI (`flows/cli/`)
parses options and renders results; the checks and decisions live here.

Nothing here imports Prefect, MLflow or pandas at module level: a pre-flight refusal must come
before any of them is loaded (and before Prefect's server starts).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.errors import ConfigError, DataError, DeployError
from tasks.extras import require

if TYPE_CHECKING:
    from tasks.config import Params


def preflight(
    params: Params,
    data: str | None = None,
    write_store: bool = True,
    folders: bool = False,
    capture_logs: bool = False,
) -> None:
    """What a command needs from this machine, checked before Prefect starts or any work is
    done: the data file (a folder or glob too with ``folders``: the Dask engine) or s3://
    credentials, then the tracking store. ``capture_logs``: the data may be an endpoint
    capture log (`popseg monitor`)."""
    from tasks import preflight as checks
    from tasks.tracking import ARTIFACT_DIR, tracking_uri

    if data is not None:
        checks.check_data_path(data, folders, params.data.delimiter, capture_logs)
    checks.check_tracking_store(
        tracking_uri(), Path.cwd() / ARTIFACT_DIR, params.register_.experiment, write_store
    )


def engine_preflight(
    params: Params, data: str | None, engine: str, scheduler: str | None, write_store: bool = True
) -> None:
    """`preflight` for a command run on an execution engine: on Dask the data may be a folder
    or a glob, and a cluster elsewhere (``--scheduler`` or ``dask.scheduler``) reads it on its
    workers' file system, so it is not looked for on this one. The Dask engine needs the 'dask'
    extra."""
    if engine == "dask":
        require("dask", "--engine dask")
    remote = engine == "dask" and bool(scheduler or params.dask.scheduler)
    preflight(params, None if remote else data, write_store, folders=engine == "dask")


def train(
    params: Params, run_promotion: bool, engine: str = "memory", scheduler: str | None = None
):
    """Pre-flight, then the training flow (and the promotion gate) with the flow timeout."""
    engine_preflight(params, params.data.path, engine, scheduler)
    start_flow_api()
    from flows.prefect_server import owner_flow_tags
    from flows.training import run_training

    wait_for_flow_api()
    timeout = params.orchestrate.flow_timeout_s
    with owner_flow_tags():
        return run_training(params, run_promotion, engine, scheduler, timeout)


# What a training flow imports on its first use of them (GX in validate, MLflow in
# register, matplotlib in the plots): loaded while the Prefect server starts.
_FLOW_IMPORTS = ("great_expectations", "mlflow", "matplotlib.figure")


def start_flow_api(imports: tuple[str, ...] = _FLOW_IMPORTS) -> None:
    """After the pre-flight: the Prefect API for this command's flows (`flows.prefect_server.
    flow_api`, a local server starting in the background when none is configured); while it
    starts, the modules the flow will need are loaded (else they would load only once the
    server answers, after it rather than beside it)."""
    import importlib

    from flows.prefect_server import flow_api, kept_api_url, temporary_api_url

    flow_api()
    if temporary_api_url() is not None or kept_api_url() is not None:
        for name in imports:
            importlib.import_module(name)


def wait_for_flow_api() -> None:
    from flows.prefect_server import wait_for_flow_api as wait

    wait()


@dataclass(frozen=True)
class ScoreSite:
    """Where a batch scoring runs: here (``local``, on the memory or Dask engine) or as a
    SageMaker batch transform job (``sagemaker``: s3:// in and out)."""

    target: str = "local"
    engine: str = "memory"
    scheduler: str | None = None
    region: str | None = None
    bucket: str | None = None
    role_arn: str | None = None


def score(
    params: Params, data: str, output: str, version: str | None, site: ScoreSite
) -> dict[str, Any]:
    """Pre-flight, then batch scoring in memory, on Dask (flows/scoring.py) or as a SageMaker
    batch transform job (tasks/deploy/sagemaker_batch.py)."""
    if site.target not in ("local", "sagemaker"):
        raise DeployError(f"--target {site.target!r}: choose local or sagemaker")
    if site.target == "sagemaker" and site.engine != "memory":
        raise ConfigError("--target sagemaker runs on SageMaker; drop --engine")
    if site.target == "sagemaker":
        require("aws", "--target sagemaker")
    engine_preflight(params, data, site.engine, site.scheduler, write_store=False)
    if site.target == "sagemaker":
        from tasks.deploy.sagemaker_batch import score_with_batch_transform

        return score_with_batch_transform(
            params, data, output, version, site.region, site.bucket, site.role_arn
        )
    from flows.scoring import score as run_score

    return run_score(params, data, output, version, site.engine, site.scheduler)


def monitor_source(data: str | None, capture: str | None) -> str:
    """The new data `popseg monitor` reads: ``--data``, or ``--capture`` (a SageMaker capture
    prefix normalised to its folder form, or a local capture log)."""
    if (data is None) == (capture is None):
        raise DataError("give the new data with --data or --capture (one of them)")
    if capture is None:
        return data
    from tasks.deploy.sagemaker_capture import capture_prefix

    return capture_prefix(capture)


def check_deploy(
    params: Params,
    target: str | None,
    region: str | None,
    bucket: str | None,
    role_arn: str | None,
) -> None:
    """Before a deploy: the target's own settings and credentials check (for SageMaker: the
    settings, then AWS credentials), then the tracking store (read only)."""
    from flows.deploy import check_target

    check_target(params, target, region, bucket, role_arn)
    preflight(params, write_store=False)


def serve_sample(params: Params, keep_serving: bool) -> dict[str, Any]:
    """The main job's last step: the champion on a local endpoint, its smoke test (the first
    training rows through SageMaker's runtime call) shown, the endpoint stopped
    (unless kept)."""
    from flows import deploy as deploy_flow
    from tasks.register import CHAMPION, alias_version

    champion = alias_version(params.register_.model_name, CHAMPION)
    if champion is None:
        return {"deployed": False, "reason": "no champion: nothing to deploy"}
    name = params.deploy.endpoint_name
    result = deploy_flow.deploy(params, version=champion, target="local", endpoint_name=name)
    stopped = False
    if not keep_serving:
        deploy_flow.undeploy(params, name, "local")
        stopped = True
    return {"deployed": True, **result.to_json(), "stopped": stopped}


def serve_schedules(
    params: Params,
    params_file: str,
    overrides: list[str],
    only: list[str] | None,
    every: float | None,
    data: str | None,
    port: int,
    notify: Callable[[str], None],
) -> str:
    """Serve the scheduled deployments until Ctrl-C or SIGTERM, on PREFECT_API_URL or a local
    Prefect server started here (and stopped after). Returns how serving stopped."""
    from flows.prefect_server import ensure_server, recorded_api
    from flows.prefect_server import ui_url as prefect_ui_url

    with ensure_server(port) as (api_url, started), recorded_api(api_url):
        # Prefect reads PREFECT_API_URL when imported: only now, with the server known.
        from flows.schedules import deployments, schedules, serve_until_stopped

        planned = schedules(params, only, every, data)
        built = deployments(params_file, overrides, planned, data)
        where = "started here" if started else "PREFECT_API_URL"
        ui = prefect_ui_url(api_url)
        notify(
            f"Prefect API {api_url} ({where}); "
            + (f"UI at {ui}" if ui else "no Prefect UI answers there (PREFECT_UI_URL)")
        )
        for item in planned:
            when = (
                f"every {item.interval_s:g} s"
                if item.interval_s
                else f"cron {item.cron!r} {item.timezone}"
            )
            notify(f"serving {item.name}: {when}")
        notify(
            "Ctrl-C or SIGTERM stops serving: schedules paused, a running flow run given "
            f"{params.schedule.stop_timeout_s:g} s (schedule.stop_timeout_s) to finish"
        )
        # One flow run at a time: a slow retrain is not overlapped by the next one.
        return serve_until_stopped(built, params.schedule.stop_timeout_s, limit=1, notify=notify)


def tracking_server_url() -> str | None:
    """The URL of the tracking server MLflow is pointed at (user and password left out), or
    None for a store popseg opens itself (sqlite, a folder, a database)."""
    from urllib.parse import urlparse

    from tasks.tracking import tracking_uri

    parts = urlparse(tracking_uri())
    if parts.scheme not in ("http", "https"):
        return None
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def tracking_server_ui(server: str, experiment: str) -> str:
    """The tracking server's UI address, opening on ``experiment``'s runs table when the server
    knows it (one REST look-up, a few seconds at most); else the server's own address."""
    import json
    import urllib.parse
    import urllib.request

    from tasks.tracking.layout import ui_runs_path

    query = urllib.parse.urlencode({"experiment_name": experiment})
    lookup = f"{server.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}"
    try:
        with urllib.request.urlopen(lookup, timeout=5) as response:
            experiment_id = json.load(response)["experiment"]["experiment_id"]
    except (OSError, ValueError, KeyError):  # unknown experiment, auth, a server that is down
        return server
    return f"{server.rstrip('/')}/{ui_runs_path(str(experiment_id))}"


def mlflow_ui(host: str, port: int, notify: Callable[[str], None], experiment: str) -> int:
    """The MLflow UI on the project's tracking store until it exits or popseg is signalled;
    returns its exit code. The address given opens on the runs table of ``experiment``."""
    from flows.runtime import run_until_signalled
    from tasks.tracking import ARTIFACT_DIR, tracking_uri

    uri = tracking_uri()
    address = f"http://{host}:{port}"
    experiment_id = _experiment_id(uri, experiment)
    if experiment_id is not None:
        from tasks.tracking.layout import ui_runs_path

        address = f"{address}/{ui_runs_path(experiment_id)}"
    notify(f"MLflow UI for {uri} at {address} (Ctrl-C to stop)")
    mlflow_cli = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    command = [
        mlflow_cli,
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
        "--default-artifact-root",
        (Path.cwd() / ARTIFACT_DIR).resolve().as_uri(),
    ]
    return run_until_signalled(command)


def _experiment_id(uri: str, name: str) -> str | None:
    """The id of experiment ``name`` in a local store; None when there is none yet (a missing
    sqlite file is not created here) or the store is a server (not waited for here)."""
    from tasks.tracking import sqlite_database

    database = sqlite_database(uri)
    if uri.startswith(("http://", "https://")) or (database is not None and not database.is_file()):
        return None
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        found = mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(name)
    except MlflowException:
        return None
    return None if found is None else found.experiment_id
