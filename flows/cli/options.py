"""The options several `popseg` commands share, and loading params.yaml with --set overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ParamsOption = Annotated[
    Path | None, typer.Option("--params", help="params file (default: ./params.yaml)")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-S", help="override a params key: section.key=value (repeatable)"),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="print one JSON object on stdout; logs go to stderr")
]
EndpointArgument = Annotated[str, typer.Argument(help="endpoint name")]
TargetOption = Annotated[
    str | None, typer.Option("--target", help="local | sagemaker (default: deploy.target)")
]
RegionOption = Annotated[
    str | None, typer.Option("--region", help="AWS region (sagemaker; default: deploy.region)")
]
VersionOption = Annotated[
    str | None,
    typer.Option("--model-version", help="registered model version (default: alias champion)"),
]
BucketOption = Annotated[
    str | None, typer.Option("--bucket", help="sagemaker: S3 bucket for model.tar.gz")
]
RoleArnOption = Annotated[
    str | None, typer.Option("--role-arn", help="sagemaker: execution role ARN")
]
EngineOption = Annotated[
    str,
    typer.Option(
        "--engine",
        help="memory (one process) | dask (a Dask cluster: --scheduler, else a LocalCluster "
        "sized to this machine; see the dask section of params.yaml)",
    ),
]
SchedulerOption = Annotated[
    str | None,
    typer.Option("--scheduler", help="Dask scheduler address, e.g. tcp://host:8786"),
]
AllowContractChangeOption = Annotated[
    bool,
    typer.Option(
        "--allow-contract-change",
        help="accept a model whose input contract (features, their order) differs from the "
        "champion's / the served model's (default: promote.allow_contract_change)",
    ),
]


def typer_app(name: str, help: str) -> typer.Typer:
    """A popseg command group: help when called bare, no shell-completion options, plain
    tracebacks (the output helper decides when a user sees one)."""
    return typer.Typer(
        name=name,
        help=help,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )


def check_engine(engine: str, scheduler: str | None) -> None:
    """--engine is memory or dask; --scheduler only goes with dask."""
    from tasks.errors import ConfigError

    if engine not in ("memory", "dask"):
        raise ConfigError(f"--engine {engine!r}: choose memory or dask")
    if scheduler and engine != "dask":
        raise ConfigError("--scheduler needs --engine dask")


def load_cli_params(params_path: Path | None, overrides: list[str] | None = None):
    """params.yaml (or --params) validated, with the --set overrides applied."""
    from tasks.config import load_params

    return load_params(params_path, overrides or [])
