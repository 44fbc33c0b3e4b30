"""`popseg prefect status|stop`: the kept local Prefect server one-shot commands share
(flows/prefect_keeper.py)."""

from __future__ import annotations

from typing import Any

import typer

from flows.cli.options import JsonOption, typer_app
from flows.cli.output import command_errors, emit

prefect_app = typer_app(
    "prefect",
    "The kept local Prefect server that `popseg run`/`train`/`monitor` share "
    "(POPSEG_PREFECT_SERVER=keep, the default).",
)


def _print_status(payload: dict[str, Any]) -> None:
    if not payload["running"]:
        typer.echo("kept Prefect server: not running")
        return
    typer.echo(f"kept Prefect server: running at {payload['api_url']} (pid {payload['pid']})")
    if payload["commands_using"]:
        typer.echo(f"in use by {payload['commands_using']} command(s)")
    else:
        typer.echo(
            f"idle: stops in {payload['idle_minutes_left']:g} min "
            f"(POPSEG_PREFECT_IDLE_MINUTES={payload['idle_minutes']:g})"
        )


@prefect_app.command()
def status(as_json: JsonOption = False) -> None:
    """Whether the kept server runs: its URL, pid, and the idle minutes left before it stops."""
    from flows import prefect_keeper

    with command_errors(as_json):
        payload = prefect_keeper.status()
    emit(payload, as_json, _print_status)


@prefect_app.command()
def stop(as_json: JsonOption = False) -> None:
    """Stop the kept server now (the next command starts a new one)."""
    from flows import prefect_keeper

    with command_errors(as_json):
        stopped = prefect_keeper.stop()
    emit(
        {"stopped": stopped},
        as_json,
        lambda p: typer.echo("stopped the kept Prefect server" if p["stopped"] else "not running"),
    )
