"""The optional parts of popseg (``pyproject.toml``'s extras) and the one check that a command
needing one has it: ``require("dask", "--engine dask")`` raises a ``MissingExtraError`` naming
the extra and the pip command that installs it.

The plain install trains, registers, reports and serves locally; the packages below are
imported only where a command uses them (never at module import time), so a missing extra
costs nothing until a command needs it.
"""

from __future__ import annotations

import importlib.util

from tasks.errors import MissingExtraError

# extra -> the top-level modules it provides that popseg imports.
EXTRAS: dict[str, tuple[str, ...]] = {
    "dask": ("dask", "distributed", "prefect_dask"),
    "aws": ("boto3", "botocore", "s3fs"),
    "dvc": ("dvc",),
    "team": ("psycopg",),
}


def require(extra: str, feature: str) -> None:
    """Every module of ``extra`` is installed, or a MissingExtraError: "``feature`` needs the
    '``extra``' extra: pip install 'popseg[``extra``]'". ``feature`` names what the user asked
    for (an option, a path, a command). Looked up, not imported: pre-flight stays fast (and
    ``prefect_dask`` would import Prefect)."""
    for module in EXTRAS[extra]:
        if not _installed(module):
            raise missing_extra(extra, feature)


def missing_extra(extra: str, feature: str, module: str | None = None) -> MissingExtraError:
    """The error for ``feature`` (what the user asked for) lacking ``extra`` (and, when known,
    the ``module`` whose import failed)."""
    lacking = f" (no module {module!r})" if module else ""
    return MissingExtraError(
        f"{feature} needs the {extra!r} extra{lacking}: pip install 'popseg[{extra}]'",
        extra,
        feature,
        module,
    )


def extra_providing(module: str | None) -> str | None:
    """The extra whose packages provide ``module`` (a dotted name), or None."""
    top = _top_level(module)
    return next((extra for extra, modules in EXTRAS.items() if top in modules), None)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder refusing it; a module set to None
        return False


def _top_level(module: str | None) -> str:
    return (module or "").split(".")[0]
