"""`popseg stage ...`: one command per pipeline stage, what `dvc.yaml` runs (the stages
themselves: `flows/file_stages.py`)."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli.options import ParamsOption, SetOption, load_cli_params, typer_app
from flows.cli.output import command_errors

stage_app = typer_app(
    "stage",
    "Run one pipeline stage on files (what dvc.yaml calls): ingest, validate, prepare, train.",
)


@stage_app.command("ingest")
def ingest_command(params_path: ParamsOption = None, overrides: SetOption = None) -> None:
    """Read the configured data and keep it, byte for byte, under data.raw_dir."""
    from flows import file_stages

    with command_errors():
        data = file_stages.ingest(load_cli_params(params_path, overrides))
    typer.echo(
        f"ingest: {data.source} -> {data.path} ({len(data.frame)} rows, "
        f"{len(data.feature_columns)} features, md5 {data.md5})"
    )


@stage_app.command("validate")
def validate_command(params_path: ParamsOption = None, overrides: SetOption = None) -> None:
    """Run the Great Expectations suite on the ingested data; a failure stops the pipeline."""
    from flows import file_stages

    with command_errors():
        report = file_stages.validate(load_cli_params(params_path, overrides))
    typer.echo(f"validate: {report.evaluated} expectations passed ({report.suite_name})")


@stage_app.command("prepare")
def prepare_command(params_path: ParamsOption = None, overrides: SetOption = None) -> None:
    """Impute, scale and reduce; the fitted values and parameters go to data/prepared."""
    from flows import file_stages

    with command_errors():
        prepared, folder = file_stages.prepare(load_cli_params(params_path, overrides))
    typer.echo(
        f"prepare: {prepared.reduced.values.shape[0]} rows x "
        f"{prepared.reduced.values.shape[1]} model dimensions -> {folder}"
    )


@stage_app.command("train")
def train_command(
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    register_model: Annotated[
        bool,
        typer.Option(
            "--register/--no-register",
            help="log the run and register the model in MLflow (alias challenger)",
        ),
    ] = True,
) -> None:
    """Sweep k, select, evaluate; write the chain, metrics and plots; register in MLflow."""
    from flows import file_stages

    with command_errors():
        metrics, registration = file_stages.train(
            load_cli_params(params_path, overrides), register_model
        )
    where = (
        f"registered {registration.model_name} v{registration.model_version} "
        f"(run {registration.run_id})"
        if registration
        else "not registered"
    )
    typer.echo(
        f"train: k={metrics['k']} silhouette={metrics.get('silhouette', float('nan')):.4f} "
        f"stability={metrics.get('stability', float('nan')):.4f}; {where}"
    )
