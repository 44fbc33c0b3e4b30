"""`popseg monitor`, `lineage` and `report`: drift of new data, where a model version came
from, and its segmentation report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli.options import (
    JsonOption,
    ModelVersionOption,
    ParamsOption,
    SetOption,
    load_cli_params,
    pick,
)
from flows.cli.output import UsageError, command_errors, emit, fail
from tasks.errors import DriftDetected


def monitor(
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="new data: CSV or Parquet (local or s3://), or a local endpoint's capture "
            "log (.jsonl)",
        ),
    ] = None,
    capture: Annotated[
        str | None,
        typer.Option(
            "--capture",
            help="instead of --data: a SageMaker endpoint's data capture (s3://bucket/prefix, "
            "every .jsonl below it) or a local endpoint's capture log",
        ),
    ] = None,
    version: ModelVersionOption = None,
    retrain: Annotated[
        bool,
        typer.Option(
            "--retrain/--no-retrain",
            help="on drift, run the training flow (and promotion gate) on the new data",
        ),
    ] = False,
    fail_on_drift: Annotated[
        bool, typer.Option("--fail-on-drift", help="exit with code 9 when drift is detected")
    ] = False,
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Label-free drift of new data against a model version's training data.

    Per-feature PSI, segment shares, distance to centroid, missing rates, against the
    champion's (or --model-version's) training data. Recorded as a monitoring run in MLflow.
    Drift is a result (exit 0) unless --fail-on-drift."""
    from flows import commands

    with command_errors(as_json):
        data = commands.monitor_source(data, capture)
        params = load_cli_params(params_path, overrides)
        commands.preflight(params, data, capture_logs=True)
        commands.start_flow_api(imports=("mlflow",))
        from flows.monitoring import monitor_flow
        from flows.prefect_server import owner_flow_tags

        commands.wait_for_flow_api()
        with owner_flow_tags():
            outcome = monitor_flow(params, data, version, retrain)
    emit(outcome.to_json(), as_json, lambda _: _print_monitor_summary(outcome))
    # The outcome is already on stdout: these errors add their line and exit code only.
    if outcome.retrain_failed is not None:
        fail(outcome.retrain_failed, as_json, reported=True)
    if outcome.drift and fail_on_drift:
        drift = DriftDetected(f"drift detected ({len(outcome.reasons)} reason(s))")
        fail(drift, as_json, reported=True)


def lineage(
    # `popseg lineage 3`, the spelling before --model-version: still taken, not shown.
    version_alias: Annotated[
        str | None, typer.Argument(hidden=True, show_default=False, metavar="VERSION")
    ] = None,
    model_version: Annotated[
        str | None, typer.Option("--model-version", help="registered model version")
    ] = None,
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    restore: Annotated[
        bool,
        typer.Option("--restore", help="bring back the exact training data from DVC"),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", help="where to restore it (default data/restored/vN/NAME)"),
    ] = None,
    remote: Annotated[
        str | None, typer.Option("--remote", help="DVC remote to pull from (default: core)")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Which data (DVC md5), params and git commit produced a model version.

    --restore checks that data out of DVC's cache or remote, byte for byte."""
    with command_errors(as_json):
        model_version = pick(
            model_version, version_alias, "--model-version", "the VERSION argument"
        )
        if model_version is None:
            raise UsageError("give the model version: --model-version N")
        params = load_cli_params(params_path, overrides)
        from tasks import lineage as lineage_step

        record = lineage_step.lineage(params.register_.model_name, model_version)
        restored = lineage_step.restore_data(record, output, remote) if restore else None
    payload = {**record.to_json(), "restored": str(restored) if restored else None}
    emit(payload, as_json, lambda _: _print_lineage(record, restored))


def report(
    version: Annotated[
        str | None,
        typer.Option(
            "--model-version", help="registered model version (default: champion, else latest)"
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="HTML file to write, or a folder (default: reports/segmentation-report-vN.html)",
        ),
    ] = None,
    params_path: ParamsOption = None,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write the segmentation report of a registered version as one HTML page.

    The page is self-contained and opens offline: data and checks, preparation, PCA, the k
    decision, a profile per segment, stability, drift history."""
    with command_errors(as_json):
        params = load_cli_params(params_path, overrides)
        from tasks.report import write_report

        written = write_report(
            params.register_.model_name, version, output, params.register_.experiment
        )
    emit(written.to_json(), as_json, _print_report)


def _print_monitor_summary(outcome) -> None:
    from flows.summary import print_monitor_summary

    print_monitor_summary(outcome)


def _print_lineage(record, restored: Path | None) -> None:
    typer.echo(f"{record.model_name} v{record.model_version} (run {record.run_id})")
    typer.echo(f"  aliases     {', '.join(record.aliases) or '-'}")
    typer.echo(f"  data md5    {record.data_md5}  (DVC hash)")
    typer.echo(f"  data        {record.data_path or '-'}  from {record.data_source}")
    typer.echo(f"  git commit  {record.git_commit}")
    typer.echo("  params")
    for key, value in record.params.items():
        typer.echo(f"    {key} = {value}")
    if restored:
        typer.echo(f"restored {restored} (md5 {record.data_md5} verified)")


def _print_report(payload: dict[str, Any]) -> None:
    typer.echo(
        f"{payload['report']}: report of {payload['model_name']} version "
        f"{payload['model_version']} ({payload['segments']} segments, "
        f"{payload['monitoring_runs']} monitoring run(s); {payload['bytes']:,} bytes)"
    )
