"""Tracking: where MLflow keeps the project's runs and models, and how they are laid out.

* this module: the tracking URI, the artifact folder and :func:`client`, the one place an
  ``MlflowClient`` is built. Standard library only (MLflow is imported when a client is
  asked for), so the CLI's pre-flight names the store without importing MLflow or pandas;
* :mod:`tasks.tracking.layout`: the run layout, the names of the artifacts, tags, params and
  metrics writers and readers share (standard library only too);
* :mod:`tasks.tracking.runs`: the writer and the reader (:class:`~tasks.tracking.runs.RunRecord`)
  of that layout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ARTIFACT_DIR = "mlartifacts"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


def sqlite_database(uri: str) -> Path | None:
    """The database file of an ``sqlite:`` URI (``sqlite:///relative.db``,
    ``sqlite:////absolute.db``; a query is dropped); None for an in-memory database or
    another kind of store."""
    if not uri.startswith("sqlite:"):
        return None
    rest = uri.split("?", 1)[0].removeprefix("sqlite://")
    if rest in ("", "/", "/:memory:"):
        return None
    return Path(rest[1:] if rest.startswith("/") else rest)


def client() -> MlflowClient:
    """An MLflow client on the store MLflow is pointed at (`register.configure_mlflow` points
    it at the project's)."""
    import mlflow

    return mlflow.MlflowClient()
