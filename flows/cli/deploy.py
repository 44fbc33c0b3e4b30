"""`popseg package`, `deploy`, `undeploy`, `endpoints`, `rollback` and `score`: a registered
model as a package, on an endpoint, or scoring a file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli.options import (
    TARGETS,
    AllowContractChangeOption,
    BucketOption,
    EndpointArgumentAlias,
    EndpointOption,
    EngineOption,
    JsonOption,
    ModelVersionOption,
    ParamsOption,
    RegionOption,
    RoleArnOption,
    SchedulerOption,
    SetOption,
    TargetOption,
    check_engine,
    choice,
    choice_type,
    load_cli_params,
    pick,
)
from flows.cli.output import command_errors, emit


def _check_endpoint_name(name: str, what: str) -> None:
    """Checked before anything is loaded or written: the name becomes a file name."""
    from tasks.deploy.contract import validate_endpoint_name

    validate_endpoint_name(name, what)


def _params_for_endpoint(
    name: str | None, alias: str | None, params_path: Path | None, overrides: list[str] | None
):
    """For a command on an existing endpoint: its name (--endpoint-name, or the argument that
    was its spelling before) checked, then params loaded; without a name, deploy.endpoint_name
    (as `popseg deploy`)."""
    name = pick(name, alias, "--endpoint-name", "the NAME argument")
    if name is not None:
        _check_endpoint_name(name, "endpoint name")
    params = load_cli_params(params_path, overrides)
    return params, name or params.deploy.endpoint_name


def package(
    output: Annotated[Path, typer.Option("--output", "-o", help="model.tar.gz path or folder")],
    version: ModelVersionOption = None,
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write the portable model package (chain.npz + chain.json, code/inference.py,
    code/chain.py)."""
    with command_errors(as_json):
        params = load_cli_params(params_path, overrides)
        from tasks.package import package_members, package_registered

        path, registered = package_registered(params.register_.model_name, version, output)
        members = package_members(path)
    payload = {
        "package": str(path),
        "model_name": registered.model_name,
        "model_version": registered.model_version,
        "run_id": registered.run_id,
        "members": members,
        "bytes": path.stat().st_size,
    }
    emit(payload, as_json, _print_package)


def deploy(
    endpoint_name: EndpointOption = None,
    version: ModelVersionOption = None,
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
    """Deploy a registered version (default: champion) to an endpoint and smoke-test it.

    An existing endpoint is updated in place; on failure the previous model keeps serving. A
    running endpoint is not swapped to a model with another input contract without
    --allow-contract-change."""
    from flows import commands

    with command_errors(as_json):
        if endpoint_name is not None:
            _check_endpoint_name(endpoint_name, "--endpoint-name")
        params = load_cli_params(params_path, overrides)
        commands.check_deploy(params, target, region, bucket, role_arn)
        from flows.deploy import deploy as run_deploy

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
    emit(result.to_json(), as_json, _print_deployed)


def undeploy(
    endpoint_alias: EndpointArgumentAlias = None,
    endpoint_name: EndpointOption = None,
    target: TargetOption = None,
    region: RegionOption = None,
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Stop a local endpoint, or delete a SageMaker endpoint (and its config and model)."""
    with command_errors(as_json):
        params, endpoint_name = _params_for_endpoint(
            endpoint_name, endpoint_alias, params_path, overrides
        )
        from flows.deploy import undeploy as run_undeploy

        payload = run_undeploy(params, endpoint_name, target, region)
    emit(
        payload,
        as_json,
        lambda _: typer.echo(f"{payload['target']} endpoint {endpoint_name!r} removed"),
    )


def endpoints(
    target: TargetOption = None,
    region: RegionOption = None,
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """List endpoints and the model version each serves (local unless --target sagemaker)."""
    with command_errors(as_json):
        params = load_cli_params(params_path, overrides)
        from flows.deploy import list_endpoints

        rows = list_endpoints(params, target, region)
    emit({"endpoints": rows}, as_json, _print_endpoints)


def rollback(
    endpoint_alias: EndpointArgumentAlias = None,
    endpoint_name: EndpointOption = None,
    target: TargetOption = None,
    region: RegionOption = None,
    bucket: BucketOption = None,
    role_arn: RoleArnOption = None,
    allow_contract_change: AllowContractChangeOption = False,
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Serve the previous version on an endpoint again and move alias champion back to it."""
    with command_errors(as_json):
        params, endpoint_name = _params_for_endpoint(
            endpoint_name, endpoint_alias, params_path, overrides
        )
        from flows.deploy import rollback as run_rollback

        payload = run_rollback(
            params,
            endpoint_name,
            target,
            region,
            bucket,
            role_arn,
            allow_contract_change or None,
        )
    emit(payload, as_json, lambda _: _print_rollback(endpoint_name, payload))


def score(
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="CSV or Parquet file, local or s3:// (--engine dask: also a folder or a glob)",
        ),
    ],
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help="CSV (or .parquet) to write; --engine dask: a folder of parts; "
            "--target sagemaker: an s3:// folder",
        ),
    ],
    version: ModelVersionOption = None,
    engine: EngineOption = "memory",
    scheduler: SchedulerOption = None,
    target: Annotated[
        choice_type(TARGETS),
        typer.Option(
            "--target",
            parser=choice(TARGETS),
            help="local: here; sagemaker: a batch transform job, s3:// in and out",
        ),
    ] = "local",
    region: RegionOption = None,
    bucket: BucketOption = None,
    role_arn: RoleArnOption = None,
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Batch scoring with a registered version (default: champion): id, segment, distance."""
    from flows import commands

    with command_errors(as_json):
        check_engine(engine, scheduler)
        params = load_cli_params(params_path, overrides)
        where = commands.ScoreSite(target, engine, scheduler, region, bucket, role_arn)
        payload = commands.score(params, data, output, version, where)
    parts = f" ({payload['parts']} parts)" if "parts" in payload else ""
    unseen = payload.get("unseen_categories") or {}
    # Values of a category level the model never saw were scored with no indicator set.
    unseen_note = "".join(
        f"\n{count} value(s) of {column} with a level the model never saw"
        for column, count in unseen.items()
    )
    emit(
        payload,
        as_json,
        lambda _: typer.echo(
            f"scored {payload['rows']} rows with {payload['model_name']} version "
            f"{payload['model_version']} -> {payload['output']}{parts}{unseen_note}"
        ),
    )


def _print_package(payload: dict[str, Any]) -> None:
    typer.echo(
        f"{payload['package']}: {payload['model_name']} version {payload['model_version']} "
        f"({payload['bytes']} bytes: {', '.join(payload['members'])})"
    )


def _print_deployed(payload: dict[str, Any]) -> None:
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


def _print_endpoints(payload: dict[str, Any]) -> None:
    rows = payload["endpoints"]
    if not rows:
        typer.echo("no endpoints")
        return
    for row in rows:
        where = row.get("endpoint_url") or row.get("endpoint_arn", "")
        typer.echo(
            f"{row['name']:<20} {row['target']:<9} {row.get('status', ''):<10} "
            f"{row.get('model_name')} v{row.get('model_version')}  {where}"
        )


def _print_rollback(endpoint_name: str, payload: dict[str, Any]) -> None:
    typer.echo(
        f"{payload['target']} endpoint {endpoint_name!r} rolled back from version "
        f"{payload['rolled_back_from']} to {payload['model_version']}; champion is now "
        f"version {payload['champion']}"
    )
