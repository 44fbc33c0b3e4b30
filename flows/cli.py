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


def _train(params_path: Path | None, overrides: list[str], as_json: bool, run_promotion: bool):
    from tasks.config import load_params

    try:
        params = load_params(params_path, overrides)
        with _stdout_to_stderr(as_json):
            from flows.training import training_flow

            outcome = training_flow(params, run_promotion)
    except PopsegError as error:
        _fail(error)
    if as_json:
        _emit_json(outcome.to_json())
    else:
        from flows.summary import print_summary

        print_summary(outcome)


@app.command()
def run(
    dataset: Annotated[
        str, typer.Option("--dataset", help="bundled dataset: crime | counties")
    ] = "crime",
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """The main job on a bundled dataset: train, register and promote."""
    if dataset not in ("crime", "counties", "synthetic"):
        _fail(PopsegError(f"--dataset {dataset!r}: choose crime or counties"))
    _train(
        params_path,
        [f"data.dataset={dataset}", "data.path=null", *(overrides or [])],
        as_json,
        run_promotion=True,
    )


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
    from tasks.config import load_params

    try:
        params = load_params(params_path, overrides or [])
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
