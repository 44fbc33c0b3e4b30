"""The `popseg` command line: parse, call a flow or step, render the outcome.

One module per command group (`train`, `deploy`, `monitoring`, `servers`, `stage`), the app in
`app.py`, shared options in `options.py`, and one helper for errors, exit codes and ``--json``
in `output.py`. What a command checks or decides lives in `flows/commands.py` and the flows.
"""

from flows.cli.app import app
from flows.cli.app import run_main as main

__all__ = ["app", "main"]
