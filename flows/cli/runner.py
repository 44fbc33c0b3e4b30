"""`popseg runner status|stop`: the warm runner flow commands share (flows/warm_runner.py)."""

from __future__ import annotations

from typing import Any

import typer

from flows.cli.options import JsonOption, typer_app
from flows.cli.output import command_errors, emit

runner_app = typer_app(
    "runner",
    "The warm process that runs `popseg run`/`train`/`monitor` without their imports "
    "(POPSEG_WARM_RUNNER=on, the default).",
)


def _print_status(payload: dict[str, Any]) -> None:
    if not payload["running"]:
        typer.echo("warm runner: not running")
        return
    typer.echo(f"warm runner: running (pid {payload['pid']}, socket {payload['socket']})")
    if not payload["current"]:
        typer.echo(
            "stale: popseg's code, packages or import-time variables changed since it started"
        )
    typer.echo(f"stops after {payload['idle_minutes']:g} idle min (POPSEG_WARM_IDLE_MINUTES)")


@runner_app.command()
def status(as_json: JsonOption = False) -> None:
    """Whether the warm runner runs: its pid, socket, and whether it matches this checkout."""
    from flows import warm_runner

    with command_errors(as_json):
        payload = warm_runner.status()
    emit(payload, as_json, _print_status)


@runner_app.command()
def stop(as_json: JsonOption = False) -> None:
    """Stop the warm runner now (commands it runs go on; the next flow command starts one)."""
    from flows import warm_runner

    with command_errors(as_json):
        stopped = warm_runner.stop()
    emit(
        {"stopped": stopped},
        as_json,
        lambda p: typer.echo("stopped the warm runner" if p["stopped"] else "not running"),
    )
