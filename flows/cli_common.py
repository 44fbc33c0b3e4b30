"""What every `popseg` command group shares: the --params/--set options, loading params, and
printing a user error (no traceback) with its exit code. Kept apart from `flows/cli.py` so
sub-apps (`flows/stage_cli.py`) use it without a circular import."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tasks.errors import PopsegError

ParamsOption = Annotated[
    Path | None, typer.Option("--params", help="params file (default: ./params.yaml)")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-S", help="override a params key: section.key=value (repeatable)"),
]


def load_cli_params(params_path: Path | None, overrides: list[str] | None):
    from tasks.config import load_params

    return load_params(params_path, overrides or [])


def fail(error: PopsegError) -> None:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(error.exit_code)
