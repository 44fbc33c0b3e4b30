"""Where MLflow keeps the project's runs and models: the tracking URI and the artifact folder.
Standard library only, so the CLI's pre-flight names the store without importing MLflow or
pandas (`tasks.register` re-exports both names)."""

from __future__ import annotations

import os
from pathlib import Path

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
