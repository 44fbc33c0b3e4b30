"""`popseg versions`, `approve` and `reject`: the registry at a glance, and a person's decision
on the candidate version when ``promote.require_approval`` is on."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from flows.cli.options import (
    JsonOption,
    ParamsOption,
    RegionOption,
    SetOption,
    TargetOption,
    load_cli_params,
)
from flows.cli.output import command_errors, emit

VersionArgument = Annotated[str, typer.Argument(help="registered model version")]


def approve(
    version: VersionArgument,
    reason: Annotated[
        str | None, typer.Option("--reason", help="why (recorded on the version)")
    ] = None,
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Approve the candidate version: moves alias champion to it, records who
    ($POPSEG_USER, else user@host), when and why on the version, clears alias candidate, and
    resumes the retrain flow run waiting for it (which then deploys it). Refused (exit 13,
    nothing moved) when the version is not the candidate or was already decided."""
    _decide(version, "approve", reason, params_path, overrides, as_json)


def reject(
    version: VersionArgument,
    reason: Annotated[str, typer.Option("--reason", help="why (required; recorded)")],
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Reject the candidate version: champion unchanged, who/when/why recorded on the
    version, alias candidate cleared; a retrain flow run waiting for it ends undeployed."""
    _decide(version, "reject", reason, params_path, overrides, as_json)


def _decide(version, decision, reason, params_path, overrides, as_json) -> None:
    with command_errors(as_json):
        params = load_cli_params(params_path, overrides)
        from flows import approval

        result = approval.decide(
            params.register_.model_name,
            version,
            decision,
            reason,
            params.orchestrate.registry_lock_timeout_s,
            alerts=params.notify,
            lock_lease_s=params.orchestrate.registry_lock_lease_s,
        )
    emit(result.to_json(), as_json, _print_decision)


def _print_decision(payload: dict[str, Any]) -> None:
    name, version = payload["model_name"], payload["version"]
    if payload["decision"] == "approved":
        before = payload["champion_before"]
        moved = f" (was version {before})" if before and before != version else ""
        typer.echo(f"{name} version {version} approved: champion is version {version}{moved}")
    else:
        champion = payload["champion"] or "none"
        typer.echo(f"{name} version {version} rejected: champion unchanged (version {champion})")
    typer.echo(f"  by {payload['by']} at {payload['at']}: {payload['reason'] or '(no reason)'}")
    for run in payload["resumed_flow_runs"]:
        typer.echo(f"  resumed the waiting flow run {run!r}")
    if payload["note"]:
        typer.echo(f"  note: {payload['note']}")
    if payload["decision"] == "approved" and not payload["resumed_flow_runs"]:
        typer.echo("  not deployed by this command: `popseg deploy` serves the new champion")


def versions(
    target: TargetOption = None,
    region: RegionOption = None,
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """One row per registered version, newest first: aliases, created, k, silhouette,
    stability, gate result and reasons, approval (who, when), data md5, and the endpoints
    serving it (local unless --target sagemaker)."""
    with command_errors(as_json):
        params = load_cli_params(params_path, overrides)
        from flows.deploy import list_endpoints
        from tasks.versions import version_rows

        endpoints = list_endpoints(params, target, region)
        rows = version_rows(params.register_.model_name, endpoints)
    payload = {
        "model_name": params.register_.model_name,
        "versions": [row.to_json() for row in rows],
    }
    emit(payload, as_json, _print_versions)


def _when(iso: str | None) -> str:
    """2026-01-31T12:34:56Z as 2026-01-31 12:34 (UTC, as the column says)."""
    return "-" if not iso else iso.replace("T", " ")[:16]


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _print_versions(payload: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{payload['model_name']}: registered versions", title_justify="left")
    for column in (
        "version",
        "aliases",
        "created (UTC)",
        "k",
        "silhouette",
        "stability",
        "gate",
        "approval",
        "data md5",
        "endpoints",
    ):
        table.add_column(column, overflow="fold")
    for row in payload["versions"]:
        gate = {True: "passed", False: "refused", None: "-"}[row["gate_passed"]]
        if row["gate_reasons"]:
            gate += "\n" + "\n".join(f"- {reason}" for reason in row["gate_reasons"])
        approval = row["approval"]
        decided = approval["state"] or "-"
        if approval["by"]:
            decided += f"\n{approval['by']}\n{_when(approval['at'])}"
        if approval["reason"]:
            decided += f"\n{approval['reason']}"
        table.add_row(
            row["version"],
            ", ".join(row["aliases"]) or "-",
            _when(row["created"]),
            "-" if row["k"] is None else str(row["k"]),
            _number(row["silhouette"], 4),
            _number(row["stability"], 3),
            gate,
            decided,
            (row["data_md5"] or "-")[:12],
            "\n".join(f"{e['name']} ({e['target']}, {e['status']})" for e in row["endpoints"])
            or "-",
        )
    console = Console()
    if not console.is_terminal:  # piped: wide enough for every column
        console = Console(width=160)
    console.print(table)
