"""Where MLflow keeps the project's runs and models: the tracking URI and the artifact folder.
Standard library only, so the CLI's pre-flight names the store without importing MLflow or
pandas (`tasks.register` re-exports both names)."""

from __future__ import annotations

import os

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ARTIFACT_DIR = "mlartifacts"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
