"""The `popseg` command line. Wiring only: parse, configure, call a flow, print the outcome."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli_common import ParamsOption, SetOption
from flows.cli_common import fail as _fail
from flows.cli_common import load_cli_params as _params
from tasks.errors import ConfigError, PopsegError

app = typer.Typer(
    name="popseg",
    help="Unsupervised segmentation of tabular populations: train, register, promote, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonOption = Annotated[
    bool, typer.Option("--json", help="print one JSON object on stdout; logs go to stderr")
]


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    from flows.reaper import start_reaper
    from flows.runtime import configure_environment, configure_logging

    # First: whatever kills popseg from here on, the servers it starts go with it.
    start_reaper()
    configure_environment()
    configure_logging(verbose)


@contextlib.contextmanager
def _stdout_to_stderr(enabled: bool):
    """With --json, anything a library prints goes to stderr; the JSON alone to stdout."""
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _emit_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _preflight(
    params, data: str | None = None, write_store: bool = True, folders: bool = False
) -> None:
    """What a command needs from this machine, checked before Prefect starts or any work is
    done: the data file (a folder or glob too with ``folders``: the Dask engine) or s3://
    credentials, then the tracking store."""
    from tasks import preflight
    from tasks.tracking import ARTIFACT_DIR, tracking_uri

    if data is not None:
        preflight.check_data_path(data, folders)
    preflight.check_tracking_store(
        tracking_uri(), Path.cwd() / ARTIFACT_DIR, params.register_.experiment, write_store
    )


def _train_outcome(
    params_path: Path | None,
    overrides: list[str],
    as_json: bool,
    run_promotion: bool,
    engine: str = "memory",
    scheduler: str | None = None,
):
    try:
        params = _params(params_path, overrides)
        # A Dask cluster elsewhere reads the data on its workers' file system, not this one.
        remote = engine == "dask" and bool(scheduler or params.dask.scheduler)
        _preflight(params, None if remote else params.data.path, folders=engine == "dask")
        with _stdout_to_stderr(as_json):
            from flows.training import run_training

            timeout = params.orchestrate.flow_timeout_s
            outcome = run_training(params, run_promotion, engine, scheduler, timeout)
    except PopsegError as error:
        _fail(error)
    return params, outcome


def _train(
    params_path: Path | None,
    overrides: list[str],
    as_json: bool,
    run_promotion: bool,
    engine: str = "memory",
    scheduler: str | None = None,
):
    _, outcome = _train_outcome(params_path, overrides, as_json, run_promotion, engine, scheduler)
    if as_json:
        _emit_json(outcome.to_json())
    else:
        from flows.summary import print_summary

        print_summary(outcome)


def _serve_sample(params, keep_serving: bool) -> dict[str, Any]:
    """The main job's last step: the champion on a local endpoint, the first training rows sent
    through the boto3 sagemaker-runtime client, the endpoint stopped (unless kept)."""
    from flows import deploy as deploy_flow
    from tasks.chain import SegmentationChain
    from tasks.errors import RegistryError
    from tasks.package import fetch_registered_chain
    from tasks.register import CHAMPION, alias_version, load_training_frame

    model_name = params.register_.model_name
    champion = alias_version(model_name, CHAMPION)
    if champion is None:
        return {"deployed": False, "reason": "no champion: nothing to deploy"}
    name = params.deploy.endpoint_name
    result = deploy_flow.deploy(params, version=champion, target="local", endpoint_name=name)
    try:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="popseg-run-") as scratch:
            registered = fetch_registered_chain(model_name, champion, scratch)
            chain = SegmentationChain.load(str(registered.chain_dir))
        try:
            frame = load_training_frame(registered.run_id).head(params.deploy.smoke_rows)
        except RegistryError:
            frame = None
        if frame is not None:
            rows = frame[chain.feature_names].to_numpy(dtype=float)
            id_column = chain.metadata.get("id_column")
            ids = (
                frame[id_column].astype(str).tolist()
                if id_column in frame.columns
                else [f"row_{i + 1}" for i in range(len(frame))]
            )
        else:
            rows = chain.fill_values.reshape(1, -1)
            ids = ["training fill values"]
        predictions = deploy_flow.invoke_rows(name, rows)
    finally:
        stopped = False
        if not keep_serving:
            deploy_flow.undeploy(params, name, "local")
            stopped = True
    return {
        "deployed": True,
        **result.to_json(),
        "sample": [
            {"id": row_id, **prediction}
            for row_id, prediction in zip(ids, predictions, strict=True)
        ],
        "stopped": stopped,
    }


def _print_endpoint(payload: dict[str, Any]) -> None:
    if not payload.get("deployed"):
        typer.echo(f"endpoint: not deployed ({payload.get('reason')})")
        return
    typer.echo(
        f"\nEndpoint {payload['endpoint_name']!r} served {payload['model_name']} version "
        f"{payload['model_version']} at {payload['endpoint_url']} (smoke test passed); "
        "answers through boto3 sagemaker-runtime invoke_endpoint:"
    )
    for item in payload["sample"]:
        typer.echo(
            f"  {item['id']:<24} segment {item['closest_cluster']:>2}   "
            f"distance {item['distance_to_cluster']:.4f}"
        )
    if payload["stopped"]:
        typer.echo("endpoint stopped (keep it with --keep-serving)")
    else:
        typer.echo(f"endpoint still serving: `popseg undeploy {payload['endpoint_name']}` stops it")


@app.command()
def run(
    dataset: Annotated[
        str, typer.Option("--dataset", help="bundled dataset: crime | counties")
    ] = "crime",
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    keep_serving: Annotated[
        bool, typer.Option("--keep-serving", help="leave the local endpoint running")
    ] = False,
    no_deploy: Annotated[
        bool, typer.Option("--no-deploy", help="stop after the promotion gate")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """The main job on a bundled dataset: train, register, promote, then serve the champion on
    a local endpoint and send it the first training rows."""
    if dataset not in ("crime", "counties", "synthetic"):
        _fail(PopsegError(f"--dataset {dataset!r}: choose crime or counties"))
    params, outcome = _train_outcome(
        params_path,
        [f"data.dataset={dataset}", "data.path=null", *(overrides or [])],
        as_json,
        run_promotion=True,
    )
    endpoint: dict[str, Any] | None = None
    if not no_deploy:
        try:
            with _stdout_to_stderr(as_json):
                endpoint = _serve_sample(params, keep_serving)
        except PopsegError as error:
            _fail(error)
    if as_json:
        _emit_json({**outcome.to_json(), "endpoint": endpoint})
        return
    from flows.summary import print_summary

    print_summary(outcome)
    if endpoint is not None:
        _print_endpoint(endpoint)


@app.command()
def train(
    data: Annotated[str, typer.Option("--data", help="CSV or Parquet file, local or s3://")],
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    no_promote: Annotated[
        bool, typer.Option("--no-promote", help="skip the promotion gate")
    ] = False,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="memory (one process) | dask (a Dask cluster: --scheduler, else a LocalCluster "
            "sized to this machine; see the dask section of params.yaml)",
        ),
    ] = "memory",
    scheduler: Annotated[
        str | None,
        typer.Option("--scheduler", help="Dask scheduler address, e.g. tcp://host:8786"),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Train on your own data (the whole pipeline, then the promotion gate)."""
    if engine not in ("memory", "dask"):
        _fail(ConfigError(f"--engine {engine!r}: choose memory or dask"))
    if scheduler and engine != "dask":
        _fail(ConfigError("--scheduler needs --engine dask"))
    _train(
        params_path,
        [*(overrides or []), f"data.path={json.dumps(data)}"],
        as_json,
        not no_promote,
        engine,
        scheduler,
    )


AllowContractChangeOption = Annotated[
    bool,
    typer.Option(
        "--allow-contract-change",
        help="accept a model whose input contract (features, their order) differs from the "
        "champion's / the served model's (default: promote.allow_contract_change)",
    ),
]


@app.command()
def promote(
    version: Annotated[
        str | None, typer.Option("--version", help="model version (default: alias challenger)")
    ] = None,
    allow_contract_change: AllowContractChangeOption = False,
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the promotion gate on a registered version; moves alias champion if it passes.
    A refusal exits 12 (GateRefused) in text and --json mode alike."""
    from tasks.errors import GateRefused

    try:
        params = _params(params_path, overrides)
        with _stdout_to_stderr(as_json):
            from tasks.promote import promote as run_gate

            decision = run_gate(
                params.register_.model_name,
                version,
                params.promote,
                params.cluster.silhouette_sample,
                params.cluster.seed,
                params.orchestrate.registry_lock_timeout_s,
                allow_contract_change or None,
            )
    except PopsegError as error:
        _fail(error)
    payload = {
        "model_name": decision.model_name,
        "model_version": decision.version,
        "passed": decision.passed,
        "promoted": decision.promoted,
        "previous_champion": decision.previous_champion,
        "reasons": decision.reasons,
        "checks": decision.checks,
    }
    if as_json:
        _emit_json(payload)
    else:
        verdict = (
            "promoted to champion"
            if decision.promoted
            else ("already champion" if decision.passed else "NOT promoted (champion unchanged)")
        )
        typer.echo(f"{decision.model_name} version {decision.version}: {verdict}")
        for reason in decision.reasons:
            typer.echo(f"  - {reason}")
    if not decision.passed:
        raise typer.Exit(GateRefused.exit_code)


def _endpoint_name(name: str, what: str) -> None:
    """Checked before anything is loaded or written: the name becomes a file name."""
    from tasks.deploy import validate_endpoint_name

    validate_endpoint_name(name, what)


TargetOption = Annotated[
    str | None, typer.Option("--target", help="local | sagemaker (default: deploy.target)")
]
RegionOption = Annotated[
    str | None, typer.Option("--region", help="AWS region (sagemaker; default: deploy.region)")
]
BucketOption = Annotated[
    str | None, typer.Option("--bucket", help="sagemaker: S3 bucket for model.tar.gz")
]
RoleArnOption = Annotated[
    str | None, typer.Option("--role-arn", help="sagemaker: execution role ARN")
]
VersionOption = Annotated[
    str | None,
    typer.Option("--model-version", help="registered model version (default: alias champion)"),
]


@app.command()
def package(
    output: Annotated[Path, typer.Option("--output", "-o", help="model.tar.gz path or folder")],
    version: VersionOption = None,
    params_path: ParamsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write the portable model package (chain.npz + chain.json, code/inference.py, code/chain.py)."""
    from tasks.package import package_members, package_registered

    try:
        params = _params(params_path, None)
        path, registered = package_registered(params.register_.model_name, version, output)
        members = package_members(path)
    except PopsegError as error:
        _fail(error)
    payload = {
        "package": str(path),
        "model_name": registered.model_name,
        "model_version": registered.model_version,
        "run_id": registered.run_id,
        "members": members,
        "bytes": path.stat().st_size,
    }
    if as_json:
        _emit_json(payload)
        return
    typer.echo(
        f"{path}: {registered.model_name} version {registered.model_version} "
        f"({payload['bytes']} bytes: {', '.join(members)})"
    )


@app.command()
def deploy(
    endpoint_name: Annotated[
        str | None,
        typer.Option("--endpoint-name", "-n", help="endpoint name (default: deploy.endpoint_name)"),
    ] = None,
    version: VersionOption = None,
    target: TargetOption = None,
    capture: Annotated[
        str | None,
        typer.Option(
            "--capture",
            help="local: append request/response capture (JSON lines); "
            "sagemaker: s3://bucket/prefix for DataCaptureConfig",
        ),
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="local: port on 127.0.0.1 (default: a free one)")
    ] = None,
    region: RegionOption = None,
    bucket: BucketOption = None,
    role_arn: RoleArnOption = None,
    allow_contract_change: AllowContractChangeOption = False,
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Deploy a registered version (default: champion) to an endpoint and smoke-test it. An
    existing endpoint is updated in place; on failure the previous model keeps serving. A
    running endpoint is not swapped to a model with another input contract without
    --allow-contract-change."""
    from flows.deploy import deploy as run_deploy

    try:
        if endpoint_name is not None:
            _endpoint_name(endpoint_name, "--endpoint-name")
        params = _params(params_path, overrides)
        if (target or params.deploy.target) == "sagemaker":
            from tasks.errors import DeployError
            from tasks.preflight import check_aws_credentials
            from tasks.sagemaker import resolve_settings

            resolve_settings(params.deploy, region, bucket, role_arn)  # settings, then secrets
            check_aws_credentials("sagemaker deploy", DeployError)
        _preflight(params, write_store=False)
        with _stdout_to_stderr(as_json):
            result = run_deploy(
                params,
                version,
                target,
                endpoint_name,
                capture,
                port,
                region,
                bucket,
                role_arn,
                allow_contract_change or None,
            )
    except PopsegError as error:
        _fail(error)
    payload = result.to_json()
    if as_json:
        _emit_json(payload)
        return
    where = payload["endpoint_url"] or payload["details"].get("endpoint_arn")
    typer.echo(
        f"{payload['action']} {payload['target']} endpoint {payload['endpoint_name']!r}: "
        f"{payload['model_name']} version {payload['model_version']} at {where}"
    )
    smoke = payload["smoke_test"]
    if smoke.get("verified") is False:
        typer.echo(f"smoke test NOT verified: {smoke['reason']}")
    else:
        typer.echo(f"smoke test passed on {smoke['rows']} row(s)")


@app.command()
def undeploy(
    endpoint_name: Annotated[str, typer.Argument(help="endpoint name")],
    target: TargetOption = None,
    region: RegionOption = None,
    params_path: ParamsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Stop a local endpoint, or delete a SageMaker endpoint (and its config and model)."""
    from flows.deploy import undeploy as run_undeploy

    try:
        _endpoint_name(endpoint_name, "endpoint name")
        params = _params(params_path, None)
        payload = run_undeploy(params, endpoint_name, target, region)
    except PopsegError as error:
        _fail(error)
    if as_json:
        _emit_json(payload)
        return
    typer.echo(f"{payload['target']} endpoint {endpoint_name!r} removed")


@app.command()
def endpoints(
    target: TargetOption = None,
    region: RegionOption = None,
    params_path: ParamsOption = None,
    as_json: JsonOption = False,
) -> None:
    """List endpoints and the model version each serves (local unless --target sagemaker)."""
    from flows.deploy import list_endpoints

    try:
        params = _params(params_path, None)
        rows = list_endpoints(params, target, region)
    except PopsegError as error:
        _fail(error)
    if as_json:
        _emit_json({"endpoints": rows})
        return
    if not rows:
        typer.echo("no endpoints")
        return
    for row in rows:
        where = row.get("endpoint_url") or row.get("endpoint_arn", "")
        typer.echo(
            f"{row['name']:<20} {row['target']:<9} {row.get('status', ''):<10} "
            f"{row.get('model_name')} v{row.get('model_version')}  {where}"
        )


@app.command()
def rollback(
    endpoint_name: Annotated[str, typer.Argument(help="endpoint name")],
    target: TargetOption = None,
    region: RegionOption = None,
    bucket: Annotated[str | None, typer.Option("--bucket", help="sagemaker: S3 bucket")] = None,
    role_arn: Annotated[
        str | None, typer.Option("--role-arn", help="sagemaker: execution role ARN")
    ] = None,
    allow_contract_change: AllowContractChangeOption = False,
    params_path: ParamsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Serve the previous version on an endpoint again and move alias champion back to it."""
    from flows.deploy import rollback as run_rollback

    try:
        _endpoint_name(endpoint_name, "endpoint name")
        params = _params(params_path, None)
        with _stdout_to_stderr(as_json):
            payload = run_rollback(
                params,
                endpoint_name,
                target,
                region,
                bucket,
                role_arn,
                allow_contract_change or None,
            )
    except PopsegError as error:
        _fail(error)
    if as_json:
        _emit_json(payload)
        return
    typer.echo(
        f"{payload['target']} endpoint {endpoint_name!r} rolled back from version "
        f"{payload['rolled_back_from']} to {payload['model_version']}; champion is now "
        f"version {payload['champion']}"
    )


@app.command()
def score(
    data: Annotated[str, typer.Option("--data", help="CSV or Parquet file, local or s3://")],
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help="CSV (or .parquet) to write; --target sagemaker: an s3:// folder",
        ),
    ],
    version: VersionOption = None,
    target: Annotated[
        str,
        typer.Option(
            "--target", help="local (here) | sagemaker (a batch transform job, s3:// in and out)"
        ),
    ] = "local",
    region: RegionOption = None,
    bucket: BucketOption = None,
    role_arn: RoleArnOption = None,
    params_path: ParamsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Batch scoring with a registered version (default: champion): id, segment, distance."""
    from flows.deploy import score as run_score

    try:
        params = _params(params_path, None)
        _preflight(params, data, write_store=False)
        if target == "sagemaker":
            from tasks.sagemaker_batch import score_with_batch_transform

            with _stdout_to_stderr(as_json):
                payload = score_with_batch_transform(
                    params, data, output, version, region, bucket, role_arn
                )
        elif target == "local":
            payload = run_score(params, data, output, version)
        else:
            from tasks.errors import DeployError

            raise DeployError(f"--target {target!r}: choose local or sagemaker")
    except PopsegError as error:
        _fail(error)
    if as_json:
        _emit_json(payload)
        return
    typer.echo(
        f"scored {payload['rows']} rows with {payload['model_name']} version "
        f"{payload['model_version']} -> {payload['output']}"
    )


@app.command()
def monitor(
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="new data: CSV or Parquet (local or s3://), or a local endpoint's capture "
            "log (.jsonl)",
        ),
    ] = None,
    capture: Annotated[
        str | None,
        typer.Option(
            "--capture",
            help="instead of --data: a SageMaker endpoint's data capture (s3://bucket/prefix, "
            "every .jsonl below it) or a local endpoint's capture log",
        ),
    ] = None,
    version: VersionOption = None,
    retrain: Annotated[
        bool,
        typer.Option(
            "--retrain/--no-retrain",
            help="on drift, run the training flow (and promotion gate) on the new data",
        ),
    ] = False,
    fail_on_drift: Annotated[
        bool, typer.Option("--fail-on-drift", help="exit with code 9 when drift is detected")
    ] = False,
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Label-free drift of new data against the champion's (or --model-version's) training
    data: per-feature PSI, segment shares, distance to centroid, missing rates. Recorded as a
    monitoring run in MLflow. Drift is a result (exit 0) unless --fail-on-drift."""
    from tasks.errors import DriftDetected

    try:
        if (data is None) == (capture is None):
            from tasks.errors import DataError

            raise DataError("give the new data with --data or --capture (one of them)")
        if capture is not None:
            from tasks.sagemaker_capture import capture_prefix

            data = capture_prefix(capture)
        params = _params(params_path, overrides)
        _preflight(params, data)
        with _stdout_to_stderr(as_json):
            from flows.monitoring import monitor_flow

            outcome = monitor_flow(params, data, version, retrain)
    except PopsegError as error:
        _fail(error)
    if as_json:
        _emit_json(outcome.to_json())
    else:
        from flows.summary import print_monitor_summary

        print_monitor_summary(outcome)
    failed = outcome.retrain_failed
    if failed is not None:
        _fail(failed)
    if outcome.drift and fail_on_drift:
        _fail(DriftDetected(f"drift detected ({len(outcome.reasons)} reason(s))"))


@app.command()
def lineage(
    model_version: Annotated[str, typer.Argument(help="registered model version")],
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    restore: Annotated[
        bool,
        typer.Option("--restore", help="bring back the exact training data from DVC"),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", help="where to restore it (default data/restored/vN/NAME)"),
    ] = None,
    remote: Annotated[
        str | None, typer.Option("--remote", help="DVC remote to pull from (default: core)")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Which data (DVC md5), params and git commit produced a model version; --restore
    checks that data out of DVC's cache or remote, byte for byte."""
    from tasks import lineage as lineage_step

    try:
        params = _params(params_path, overrides)
        record = lineage_step.lineage(params.register_.model_name, model_version)
        restored = lineage_step.restore_data(record, output, remote) if restore else None
    except PopsegError as error:
        _fail(error)
    payload = {**record.to_json(), "restored": str(restored) if restored else None}
    if as_json:
        _emit_json(payload)
        return
    typer.echo(f"{record.model_name} v{record.model_version} (run {record.run_id})")
    typer.echo(f"  aliases     {', '.join(record.aliases) or '-'}")
    typer.echo(f"  data md5    {record.data_md5}  (DVC hash)")
    typer.echo(f"  data        {record.data_path or '-'}  from {record.data_source}")
    typer.echo(f"  git commit  {record.git_commit}")
    typer.echo("  params")
    for key, value in record.params.items():
        typer.echo(f"    {key} = {value}")
    if restored:
        typer.echo(f"restored {restored} (md5 {record.data_md5} verified)")


@app.command()
def report(
    version: Annotated[
        str | None,
        typer.Option(
            "--model-version", help="registered model version (default: champion, else latest)"
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="HTML file to write, or a folder (default: reports/segmentation-report-vN.html)",
        ),
    ] = None,
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write the segmentation report of a registered version: one self-contained HTML page
    (data and checks, preparation, PCA, the k decision, a profile per segment, stability,
    drift history) that opens offline."""
    from tasks.report import write_report

    try:
        params = _params(params_path, overrides)
        written = write_report(
            params.register_.model_name, version, output, params.register_.experiment
        )
    except PopsegError as error:
        _fail(error)
    payload = written.to_json()
    if as_json:
        _emit_json(payload)
        return
    typer.echo(
        f"{payload['report']}: report of {payload['model_name']} version "
        f"{payload['model_version']} ({payload['segments']} segments, "
        f"{payload['monitoring_runs']} monitoring run(s); {payload['bytes']:,} bytes)"
    )


@app.command()
def serve(
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="serve only these deployments: train, retrain, monitor"),
    ] = None,
    every: Annotated[
        float | None,
        typer.Option("--every", min=1.0, help="run every N seconds instead of the crons (demos)"),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data", help="new data for monitor/retrain (default: schedule.monitor_data)"
        ),
    ] = None,
    port: Annotated[
        int, typer.Option("--port", help="port of the local Prefect server (0 = a free one)")
    ] = 4200,
    write_prefect_yaml: Annotated[
        bool,
        typer.Option("--write-prefect-yaml", help="write prefect.yaml from params.yaml and exit"),
    ] = False,
) -> None:
    """Run the scheduled deployments (train, retrain, monitor) on params.yaml's crons. Starts a
    local Prefect server unless PREFECT_API_URL is set; Ctrl-C stops both."""
    try:
        params = _params(params_path, overrides)
        if write_prefect_yaml:
            from flows.schedules import PREFECT_YAML, prefect_yaml

            Path(PREFECT_YAML).write_text(prefect_yaml(params))
            typer.echo(f"wrote {PREFECT_YAML}")
            return
        from flows.prefect_server import ensure_server

        params_file = str((params_path or Path("params.yaml")).resolve())
        with ensure_server(port) as (api_url, started):
            from flows.schedules import deployments, schedules

            planned = schedules(params, only, every, data)
            built = deployments(params_file, list(overrides or []), planned, data)
            where = "started here" if started else "PREFECT_API_URL"
            typer.echo(
                f"Prefect API {api_url} ({where}); UI at {api_url.removesuffix('/api')}", err=True
            )
            for item in planned:
                when = (
                    f"every {item.interval_s:g} s"
                    if item.interval_s
                    else f"cron {item.cron!r} {item.timezone}"
                )
                typer.echo(f"serving {item.name}: {when}", err=True)
            typer.echo(
                "Ctrl-C or SIGTERM stops serving: schedules paused, a running flow run given "
                f"{params.schedule.stop_timeout_s:g} s (schedule.stop_timeout_s) to finish",
                err=True,
            )
            from flows.schedules import serve_until_stopped

            # One flow run at a time: a slow retrain is not overlapped by the next one.
            how = serve_until_stopped(
                built,
                params.schedule.stop_timeout_s,
                limit=1,
                notify=lambda line: typer.echo(line, err=True),
            )
        typer.echo(f"stopped ({how})", err=True)
    except PopsegError as error:
        _fail(error)


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="port")] = 5000,
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
) -> None:
    """Start the MLflow UI on the project's tracking store (MLFLOW_TRACKING_URI overrides)."""
    from tasks.register import ARTIFACT_DIR, tracking_uri

    uri = tracking_uri()
    typer.echo(f"MLflow UI for {uri} at http://{host}:{port} (Ctrl-C to stop)", err=True)
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
    from flows.runtime import run_until_signalled

    raise typer.Exit(run_until_signalled(command))


def _register_subcommands() -> None:
    from flows.stage_cli import stage_app

    app.add_typer(stage_app, name="stage")


_register_subcommands()

if __name__ == "__main__":  # pragma: no cover
    app()
