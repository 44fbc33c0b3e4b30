"""`popseg serve` and `ui`: the scheduled deployments on a Prefect server, the MLflow UI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli.options import DeploymentsOption, ParamsOption, SetOption, load_cli_params
from flows.cli.output import command_errors


def _note(line: str) -> None:
    typer.echo(line, err=True)


def serve(
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    only: DeploymentsOption = None,
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
    """Run the scheduled deployments (train, retrain, monitor) on params.yaml's crons.

    Starts a local Prefect server unless PREFECT_API_URL is set; Ctrl-C stops both."""
    with command_errors():
        params = load_cli_params(params_path, overrides)
        if write_prefect_yaml:
            from flows.schedules import PREFECT_YAML, prefect_yaml

            Path(PREFECT_YAML).write_text(prefect_yaml(params))
            typer.echo(f"wrote {PREFECT_YAML}")
            return
        from flows import commands

        params_file = str((params_path or Path("params.yaml")).resolve())
        how = commands.serve_schedules(
            params, params_file, list(overrides or []), only, every, data, port, _note
        )
    _note(f"stopped ({how})")


def ui(
    port: Annotated[int, typer.Option(help="port")] = 5000,
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
) -> None:
    """Start the MLflow UI on the project's tracking store (MLFLOW_TRACKING_URI overrides),
    opening on the runs of the training experiment (register.experiment). With a tracking
    server (http/https), print its URL: it serves the UI already."""
    from flows import commands

    server = commands.tracking_server_url()
    if server is not None:
        _note("MLFLOW_TRACKING_URI is a tracking server, which already serves the MLflow UI:")
        typer.echo(commands.tracking_server_ui(server, _training_experiment()))
        raise typer.Exit(0)
    with command_errors():
        code = commands.mlflow_ui(host, port, _note, _training_experiment())
    raise typer.Exit(code)


def _training_experiment() -> str:
    """register.experiment of ./params.yaml, the default one without a params file."""
    from tasks.config import RegisterConfig

    if Path("params.yaml").is_file():
        return load_cli_params(None).register_.experiment
    return RegisterConfig().experiment
