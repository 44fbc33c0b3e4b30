"""`popseg stack up|status|down|env`: the team stack (PostgreSQL, S3, MLflow server, Prefect
server with a worker) on this machine, its state under ./.popseg/stack/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli.options import JsonOption, typer_app
from flows.cli.output import command_errors, emit, fail

stack_app = typer_app(
    "stack",
    "The team stack on this machine: PostgreSQL, S3 (moto unless configured), MLflow server, "
    "Prefect server + worker. State under ./.popseg/stack/.",
)


def _note(line: str) -> None:
    typer.echo(line, err=True)


def _print_environment(payload: dict[str, Any]) -> None:
    from flows.stack.lifecycle import environment_lines

    for line in environment_lines(payload):
        typer.echo(line)


@stack_app.command()
def up(
    as_json: JsonOption = False,
    postgres_port: Annotated[
        int, typer.Option("--postgres-port", min=0, max=65535, help="0 = recorded or free")
    ] = 0,
    mlflow_port: Annotated[
        int, typer.Option("--mlflow-port", min=0, max=65535, help="0 = recorded or free")
    ] = 0,
    prefect_port: Annotated[
        int, typer.Option("--prefect-port", min=0, max=65535, help="0 = recorded or free")
    ] = 0,
    bucket: Annotated[
        str, typer.Option("--bucket", help="S3 bucket for the MLflow artifacts (first up)")
    ] = "popseg-artifacts",
) -> None:
    """Bring the stack up (again): running, answering parts are kept, dead ones restarted.
    Prints the `export` lines that point popseg at it (--json: URLs, pids, logs)."""
    from flows.stack.lifecycle import Ports
    from flows.stack.lifecycle import up as bring_up

    with command_errors(as_json):
        payload = bring_up(
            Path.cwd(), Ports(postgres_port, mlflow_port, prefect_port), bucket, _note
        )

    def render(result: dict[str, Any]) -> None:
        _note(f"MLflow UI  {result['tracking_uri']}")
        _note(f"Prefect UI {result['prefect_ui_url']}")
        _note(f"artifacts  {result['artifact_destination']} (S3: {result['s3']})")
        _note('paste into a shell, or `eval "$(popseg stack env)"`:')
        _print_environment(result)

    emit(payload, as_json, render)


@stack_app.command()
def status(as_json: JsonOption = False) -> None:
    """Each part's pid, port and health; exit 14 unless every part runs and answers."""
    from flows.stack.lifecycle import status as stack_status
    from tasks.errors import StackError

    with command_errors(as_json):
        payload = stack_status(Path.cwd())

    def render(result: dict[str, Any]) -> None:
        if not result["components"]:
            typer.echo(f"no stack in {result['project_dir']} (popseg stack up)")
            return
        for name, part in result["components"].items():
            health = "healthy" if part["healthy"] else "running" if part["running"] else "down"
            port = f" port {part['port']}" if part["port"] else ""
            typer.echo(f"{name:<15} {health:<8} pid {part['pid']}{port}  {part['log']}")

    emit(payload, as_json, render)
    if not payload["up"]:
        broken = [n for n, c in payload["components"].items() if not c["healthy"]]
        reason = f"down: {', '.join(broken)}" if broken else "not up"
        fail(StackError(f"stack in {payload['project_dir']}: {reason}"), as_json, reported=True)


@stack_app.command()
def down() -> None:
    """Stop what `stack up` started here, and nothing else (data and logs stay)."""
    from flows.stack.lifecycle import down as bring_down

    with command_errors():
        stopped = bring_down(Path.cwd(), _note)
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing to stop")


@stack_app.command()
def env() -> None:
    """The `export` lines for the stack that is up here (`eval "$(popseg stack env)"`)."""
    from flows.stack.lifecycle import status as stack_status
    from tasks.errors import StackError

    with command_errors():
        payload = stack_status(Path.cwd())
        if not payload["components"]:
            raise StackError(f"no stack in {payload['project_dir']}: run `popseg stack up`")
    _print_environment(payload)
