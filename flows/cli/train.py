"""`popseg run`, `train` and `promote`: training on a bundled dataset or the user's data, and
the promotion gate."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from flows.cli.options import (
    AllowContractChangeOption,
    DatasetOption,
    EngineOption,
    JsonOption,
    ParamsOption,
    SchedulerOption,
    SetOption,
    check_engine,
    load_cli_params,
    pick,
)
from flows.cli.output import command_errors, emit
from tasks.errors import GateRefused


def run(
    dataset: DatasetOption = "crime",
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
    """The main job on a bundled dataset: train, register, promote, serve.

    The champion is then served on a local endpoint and sent the first training rows."""
    from flows import commands

    endpoint: dict[str, Any] | None = None
    with command_errors(as_json):
        params = load_cli_params(
            params_path, [f"data.dataset={dataset}", "data.path=null", *(overrides or [])]
        )
        outcome = commands.train(params, run_promotion=True)
        if not no_deploy:
            endpoint = commands.serve_sample(params, keep_serving)
    emit(
        {**outcome.to_json(), "endpoint": endpoint},
        as_json,
        lambda _: _print_run(outcome, endpoint),
    )


def train(
    data: Annotated[str, typer.Option("--data", help="CSV or Parquet file, local or s3://")],
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    no_promote: Annotated[
        bool, typer.Option("--no-promote", help="skip the promotion gate")
    ] = False,
    engine: EngineOption = "memory",
    scheduler: SchedulerOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train on your own data (the whole pipeline, then the promotion gate)."""
    from flows import commands

    with command_errors(as_json):
        check_engine(engine, scheduler)
        params = load_cli_params(params_path, [*(overrides or []), f"data.path={json.dumps(data)}"])
        outcome = commands.train(params, not no_promote, engine, scheduler)
    emit(outcome.to_json(), as_json, lambda _: _print_summary(outcome))


def promote(
    version: Annotated[
        str | None,
        typer.Option(
            "--model-version", help="registered model version (default: alias challenger)"
        ),
    ] = None,
    # The spelling before --model-version: still taken, not shown.
    version_alias: Annotated[str | None, typer.Option("--version", hidden=True)] = None,
    allow_contract_change: AllowContractChangeOption = False,
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the promotion gate on a registered version; alias champion moves if it passes.

    With promote.require_approval the version becomes the candidate instead, until `popseg
    approve`. A refusal exits 12 (GateRefused) in text and --json mode alike."""
    with command_errors(as_json):
        version = pick(version, version_alias, "--model-version", "--version")
        params = load_cli_params(params_path, overrides)
        from tasks.promote import promote as run_gate

        decision = run_gate(
            params.register_.model_name,
            version,
            params.promote,
            params.cluster.silhouette_sample,
            params.cluster.seed,
            params.orchestrate.registry_lock_timeout_s,
            allow_contract_change or None,
            params.orchestrate.registry_lock_lease_s,
            alerts=params.notify,
        )
    payload = {
        "model_name": decision.model_name,
        "model_version": decision.version,
        "passed": decision.passed,
        "promoted": decision.promoted,
        "candidate": decision.candidate,
        "previous_champion": decision.previous_champion,
        "reasons": decision.reasons,
        "checks": decision.checks,
    }
    emit(payload, as_json, _print_decision)
    if not decision.passed:
        raise typer.Exit(GateRefused.exit_code)


def _print_summary(outcome) -> None:
    from flows.summary import print_summary

    print_summary(outcome)


def _print_run(outcome, endpoint: dict[str, Any] | None) -> None:
    _print_summary(outcome)
    if endpoint is not None:
        _print_endpoint(endpoint)


def _print_decision(payload: dict[str, Any]) -> None:
    if payload["promoted"]:
        verdict = "promoted to champion"
    elif payload["candidate"]:
        verdict = "passed; candidate, awaiting approval (champion unchanged)"
    elif payload["passed"]:
        verdict = "already champion"
    else:
        verdict = "NOT promoted (champion unchanged)"
    typer.echo(f"{payload['model_name']} version {payload['model_version']}: {verdict}")
    for reason in payload["reasons"]:
        typer.echo(f"  - {reason}")


def _print_endpoint(payload: dict[str, Any]) -> None:
    if not payload.get("deployed"):
        typer.echo(f"endpoint: not deployed ({payload.get('reason')})")
        return
    typer.echo(
        f"\nEndpoint {payload['endpoint_name']!r} served {payload['model_name']} version "
        f"{payload['model_version']} at {payload['endpoint_url']} (smoke test passed); "
        "answers through SageMaker's runtime call (invoke_endpoint):"
    )
    for item in payload["sample"]:
        typer.echo(
            f"  {item['id']:<24} segment {item['closest_cluster']:>2}   "
            f"distance {item['distance_to_cluster']:.4f}"
        )
    if payload["stopped"]:
        typer.echo("endpoint stopped (keep it with --keep-serving)")
    else:
        typer.echo(
            f"endpoint still serving: `popseg undeploy -n {payload['endpoint_name']}` stops it"
        )
