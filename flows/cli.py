"""The `popseg` command line. Wiring only: parse, configure, call a flow, print the outcome."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tasks.errors import PopsegError

app = typer.Typer(
    name="popseg",
    help="Unsupervised segmentation of tabular populations: train, register, promote, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOption = Annotated[
    Path | None, typer.Option("--params", help="params file (default: ./params.yaml)")
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="print one JSON object on stdout; logs go to stderr")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-S", help="override a params key: section.key=value (repeatable)"),
]


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    from flows.runtime import configure_environment, configure_logging

    configure_environment()
    configure_logging(verbose)


def _fail(error: PopsegError) -> None:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(error.exit_code)


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


def _train_outcome(
    params_path: Path | None, overrides: list[str], as_json: bool, run_promotion: bool
):
    try:
        params = _params(params_path, overrides)
        with _stdout_to_stderr(as_json):
            from flows.training import training_flow

            outcome = training_flow(params, run_promotion)
    except PopsegError as error:
        _fail(error)
    return params, outcome


def _train(params_path: Path | None, overrides: list[str], as_json: bool, run_promotion: bool):
    _, outcome = _train_outcome(params_path, overrides, as_json, run_promotion)
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
    as_json: JsonOption = False,
) -> None:
    """Train on your own data (the whole pipeline, then the promotion gate)."""
    _train(
        params_path,
        [*(overrides or []), f"data.path={json.dumps(data)}"],
        as_json,
        run_promotion=not no_promote,
    )


@app.command()
def promote(
    version: Annotated[
        str | None, typer.Option("--version", help="model version (default: alias challenger)")
    ] = None,
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the promotion gate on a registered version; moves alias champion if it passes."""
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
        return
    verdict = (
        "promoted to champion"
        if decision.promoted
        else ("already champion" if decision.passed else "NOT promoted (champion unchanged)")
    )
    typer.echo(f"{decision.model_name} version {decision.version}: {verdict}")
    for reason in decision.reasons:
        typer.echo(f"  - {reason}")
    if not decision.passed:
        raise typer.Exit(1)


TargetOption = Annotated[
    str | None, typer.Option("--target", help="local | sagemaker (default: deploy.target)")
]
RegionOption = Annotated[
    str | None, typer.Option("--region", help="AWS region (sagemaker; default: deploy.region)")
]
VersionOption = Annotated[
    str | None,
    typer.Option("--model-version", help="registered model version (default: alias champion)"),
]


def _params(params_path: Path | None, overrides: list[str] | None):
    from tasks.config import load_params

    return load_params(params_path, overrides or [])


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
        typer.Option("--capture", help="local: append request/response capture (JSON lines)"),
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="local: port on 127.0.0.1 (default: a free one)")
    ] = None,
    region: RegionOption = None,
    bucket: Annotated[
        str | None, typer.Option("--bucket", help="sagemaker: S3 bucket for model.tar.gz")
    ] = None,
    role_arn: Annotated[
        str | None, typer.Option("--role-arn", help="sagemaker: execution role ARN")
    ] = None,
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Deploy a registered version (default: champion) to an endpoint and smoke-test it. An
    existing endpoint is updated in place; on failure the previous model keeps serving."""
    from flows.deploy import deploy as run_deploy

    try:
        params = _params(params_path, overrides)
        with _stdout_to_stderr(as_json):
            result = run_deploy(
                params, version, target, endpoint_name, capture, port, region, bucket, role_arn
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
    params_path: ParamsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Serve the previous version on an endpoint again and move alias champion back to it."""
    from flows.deploy import rollback as run_rollback

    try:
        params = _params(params_path, None)
        with _stdout_to_stderr(as_json):
            payload = run_rollback(params, endpoint_name, target, region, bucket, role_arn)
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
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV (or .parquet) to write")],
    version: VersionOption = None,
    params_path: ParamsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Batch scoring with a registered version (default: champion): id, segment, distance."""
    from flows.deploy import score as run_score

    try:
        params = _params(params_path, None)
        payload = run_score(params, data, str(output), version)
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
    try:
        raise typer.Exit(subprocess.call(command, env=os.environ.copy()))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


if __name__ == "__main__":  # pragma: no cover
    app()
