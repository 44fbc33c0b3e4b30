"""The `popseg` Typer app: process set-up before any command, and the commands of each group
(`train.py`, `deploy.py`, `monitoring.py`, `servers.py`; `stage.py` under `popseg stage`,
`stack.py` under `popseg stack`)."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli import deploy, monitoring, servers, stack, stage, train
from flows.cli.options import typer_app

app = typer_app(
    "popseg", "Unsupervised segmentation of tabular populations: train, register, promote, serve."
)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
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
