"""The `popseg` Typer app: `--version`, process set-up before any command, and the commands of
each group (`train.py`, `deploy.py`, `monitoring.py`, `registry.py`, `servers.py`; `stage.py`
under `popseg stage`, `stack.py` under `popseg stack`)."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli import (
    deploy,
    monitoring,
    prefect,
    registry,
    runner,
    servers,
    stack,
    stage,
    train,
)
from flows.cli.options import typer_app

app = typer_app(
    "popseg", "Unsupervised segmentation of tabular populations: train, register, promote, serve."
)


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        typer.echo(f"popseg {version('popseg')}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            expose_value=False,
            help="print popseg's version and exit",
        ),
    ] = False,
) -> None:
    from flows.reaper import start_reaper
    from flows.runtime import configure_environment, configure_logging

    # First: whatever kills popseg from here on, the servers it starts go with it.
    start_reaper()
    configure_environment()
    configure_logging(verbose)


# In this order in `popseg --help`.
COMMANDS = (
    train.run,
    train.train,
    train.promote,
    registry.approve,
    registry.reject,
    registry.versions,
    deploy.package,
    deploy.deploy,
    deploy.undeploy,
    deploy.endpoints,
    deploy.rollback,
    deploy.score,
    monitoring.monitor,
    monitoring.lineage,
    monitoring.report,
    servers.serve,
    servers.ui,
)
for command in COMMANDS:
    app.command()(command)
app.add_typer(stage.stage_app, name="stage")
app.add_typer(stack.stack_app, name="stack")
app.add_typer(prefect.prefect_app, name="prefect")
app.add_typer(runner.runner_app, name="runner")


def run_main() -> None:
    """The `popseg` console script: the command in the project's warm runner when one serves
    it (flows/warm_runner.py), else here; then a fast exit. Python's own finalisation of
    Prefect's, MLflow's and GX's modules costs ~3 s at each exit; everything that must happen
    at exit (Prefect's log and event workers drain, MLflow's async logging, atexit handlers,
    logging and stdio flushed) is done here first, then ``os._exit`` skips the rest."""
    import os
    import sys

    from flows import warm_runner
    from flows.runtime import configure_environment

    argv = sys.argv[1:]
    configure_environment()
    environment = dict(os.environ)
    try:
        code = warm_runner.run_in_runner(argv)
    except ValueError as bad:  # a bad POPSEG_WARM_RUNNER / POPSEG_WARM_IDLE_MINUTES
        print(f"Error: {bad}", file=sys.stderr)
        code = 2
    if code is None:
        code = run_app(argv)
        warm_runner.start_for_next(argv, environment)
    finish()
    os._exit(code)


def run_app(argv: list[str]) -> int:
    """Run the app on ``argv`` and return its exit code."""
    import sys

    from flows.runtime import keep_freed_memory
    from flows.warm_runner import warm_command

    if warm_command(argv) is not None:
        keep_freed_memory()
    try:
        app(args=argv, prog_name="popseg", standalone_mode=True)
    except SystemExit as done:
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return 0


def finish() -> None:
    """What interpreter shutdown would do that matters: flush MLflow's async logging, join
    non-daemon threads and run threading's exit hooks (Prefect drains its API log and event
    workers there), atexit handlers (servers stopped, logging shut down), stdio flushed."""
    import atexit
    import contextlib
    import sys
    import threading

    if "mlflow" in sys.modules:
        with contextlib.suppress(Exception):
            sys.modules["mlflow"].flush_async_logging()
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
