"""The options several `popseg` commands share, the Typer app every command group is built
with, and loading params.yaml with --set overrides.

Conventions every command gets from here: `-h` as `--help`; flags shown as flags (Typer would
show `--json <bool>`); help text reflowed so it wraps at the terminal's width; an option with
a fixed set of values is a choice (shown and completed in the shell) whose error lists the
values; a usage error is one `error:` line and exit 2, in text and --json mode alike
(`output.usage_failure`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from typer.core import TyperCommand, TyperGroup

from flows.cli.output import NoArgsIsHelpError, UsageError, usage_failure

# The choices of the enumerated options. Each mirrors the pipeline's own list (tasks/ingest.py
# BUNDLED_DATASETS, tasks/deploy TARGETS, tasks/engine.py ENGINES, flows/schedules.py
# DEPLOYMENTS; tests/e2e/test_cli_conventions.py checks they agree): importing those modules
# here would load pandas or Prefect before `popseg -h` or a shell completion could answer.
DATASETS = ("crime", "counties", "synthetic")
TARGETS = ("local", "sagemaker")
ENGINES = ("memory", "dask")
DEPLOYMENTS = ("train", "retrain", "monitor")

HELP_OPTION_NAMES = ["-h", "--help"]


def one_of(values: Sequence[str]) -> str:
    """``a, b or c``."""
    return " or ".join([", ".join(values[:-1]), values[-1]] if len(values) > 1 else values)


def choice(values: tuple[str, ...]) -> Callable[[str], str]:
    """The parser of an option that takes one of ``values``: the value as given, or a usage
    error naming the value and listing the choices."""

    def parse(value: str) -> str:
        if value not in values:
            raise typer.BadParameter(f"{value!r}: choose {one_of(values)}")
        return value

    return parse


def choice_type(values: tuple[str, ...]) -> Any:
    # A Literal of the values: what Typer shows (<a|b>) and completes in the shell.
    return Literal[values]  # type: ignore[valid-type]


def choices_type(values: tuple[str, ...]) -> Any:
    # Typer takes no list of a Literal; an Enum shows and completes the same (the parser
    # still hands the command plain strings).
    return StrEnum("Choices", values)


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
EndpointOption = Annotated[
    str | None,
    typer.Option("--endpoint-name", "-n", help="endpoint name (default: deploy.endpoint_name)"),
]
# `popseg undeploy NAME` / `rollback NAME`, the spelling before --endpoint-name: still taken,
# not shown.
EndpointArgumentAlias = Annotated[
    str | None, typer.Argument(hidden=True, show_default=False, metavar="NAME")
]
TargetOption = Annotated[
    choice_type(TARGETS) | None,
    typer.Option(
        "--target", parser=choice(TARGETS), help="where the endpoint runs (default: deploy.target)"
    ),
]
RegionOption = Annotated[
    str | None, typer.Option("--region", help="AWS region (sagemaker; default: deploy.region)")
]
ModelVersionOption = Annotated[
    str | None,
    typer.Option("--model-version", help="registered model version (default: alias champion)"),
]
# The name before s22 (other branches may still import it).
VersionOption = ModelVersionOption
BucketOption = Annotated[
    str | None, typer.Option("--bucket", help="sagemaker: S3 bucket for model.tar.gz")
]
RoleArnOption = Annotated[
    str | None, typer.Option("--role-arn", help="sagemaker: execution role ARN")
]
EngineOption = Annotated[
    choice_type(ENGINES),
    typer.Option(
        "--engine",
        parser=choice(ENGINES),
        help="memory: one process; dask: a Dask cluster (--scheduler, else a LocalCluster sized "
        "to this machine; see the dask section of params.yaml)",
    ),
]
SchedulerOption = Annotated[
    str | None,
    typer.Option("--scheduler", help="Dask scheduler address, e.g. tcp://host:8786"),
]
DatasetOption = Annotated[
    choice_type(DATASETS),
    typer.Option(
        "--dataset",
        parser=choice(DATASETS),
        metavar="<name>",
        help=f"bundled dataset: {one_of(DATASETS)}",
    ),
]
DeploymentsOption = Annotated[
    list[choices_type(DEPLOYMENTS)] | None,
    typer.Option(
        "--only",
        parser=choice(DEPLOYMENTS),
        metavar="<name>",
        help=f"serve only these deployments: {', '.join(DEPLOYMENTS)} (repeatable)",
    ),
]
AllowContractChangeOption = Annotated[
    bool,
    typer.Option(
        "--allow-contract-change",
        help="accept a model whose input contract (features, their order) differs from the "
        "champion's / the served model's (default: promote.allow_contract_change)",
    ),
]


def reflow(text: str | None) -> str | None:
    """Help text with each paragraph on one line, for the terminal to wrap: docstrings break
    lines mid-sentence, and Typer keeps those breaks in the command list."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def _flags_as_flags(params: list[Any]) -> list[Any]:
    # Typer's help shows every option's type, flags included (`--json <bool>`); an empty
    # metavar shows none.
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Conventions:
    """What every popseg command and group does beyond Typer: reflowed help, flags shown as
    flags, usage errors as one line (`output.usage_failure`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = reflow(self.help)

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_as_flags(super().get_params(ctx))

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        as_json = "--json" in args  # before parsing: the parser consumes the list
        try:
            return super().parse_args(ctx, args)
        except NoArgsIsHelpError:
            raise
        except UsageError as error:
            usage_failure(error, as_json)


class PopsegCommand(_Conventions, TyperCommand):
    """A `popseg` command."""


class PopsegGroup(_Conventions, TyperGroup):
    """A `popseg` command group; an unknown command is a usage error too."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except UsageError as error:
            usage_failure(error, "--json" in args)


class PopsegTyper(typer.Typer):
    """`typer.Typer` whose commands are `PopsegCommand`s unless they name another class."""

    def command(self, *args: Any, cls: type[TyperCommand] | None = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or PopsegCommand, **kwargs)


def typer_app(name: str, help: str) -> PopsegTyper:
    """A popseg command group: help when called bare, `-h` as `--help`, shell completion
    (`--install-completion`, `--show-completion`; Typer adds them to the top app only), plain
    tracebacks (the output helper decides when a user sees one)."""
    return PopsegTyper(
        name=name,
        help=help,
        cls=PopsegGroup,
        no_args_is_help=True,
        add_completion=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": HELP_OPTION_NAMES},
    )


def check_engine(engine: str, scheduler: str | None) -> None:
    """--scheduler only goes with --engine dask (the choice itself is checked by the option)."""
    from tasks.errors import ConfigError

    if scheduler and engine != "dask":
        raise ConfigError("--scheduler needs --engine dask")


def pick(given: str | None, alias: str | None, option: str, alias_name: str) -> str | None:
    """The value of an option that has an older spelling (``alias``): either, not two
    different values."""
    if given is not None and alias is not None and given != alias:
        raise UsageError(f"{option} {given!r} and {alias_name} {alias!r} disagree: give one")
    return given if given is not None else alias


def load_cli_params(params_path: Path | None, overrides: list[str] | None = None):
    """params.yaml (or --params) validated, with the --set overrides applied."""
    from tasks.config import load_params

    return load_params(params_path, overrides or [])
