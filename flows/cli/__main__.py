"""`python -m flows.cli`: the same as `popseg`."""

from flows.cli import app

app()
