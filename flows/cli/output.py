"""How every `popseg` command ends: its result rendered as text or as one JSON document, and
its errors turned into an exit code and one `error:` line.

A command runs its work inside `command_errors(as_json)` and hands the result to `emit`:

- a `PopsegError` exits with the error class's `exit_code` and prints `error: <message>` on
  stderr; with ``--json`` stdout also gets one JSON document naming the error, so a script
  reads stdout in both outcomes and the exit code is the same in both modes;
- a usage error (an unknown option, a missing one, a value not among an option's choices)
  exits 2 with one `error:` line, and with ``--json`` the same JSON document on stdout
  (`usage_failure`; the commands' parser calls it, see `options.PopsegCommand`);
- a command that needs an optional extra which is not installed exits with
  `MissingExtraError`'s code and names the command, the extra and the pip command (also when
  the missing package is only noticed at its import: a `ModuleNotFoundError` of a module an
  extra provides);
- any other exception is a bug: exit 1 with a one-line `error: unexpected ...` on stderr, and
  the traceback only with ``--verbose`` or ``POPSEG_DEBUG=1``;
- with ``--json`` whatever a library prints while the command works goes to stderr, so stdout
  holds the JSON document alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import typer
from typer.main import get_current_context

try:  # Typer vendors click (0.2x on): its usage errors are not the `click` package's classes
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - a Typer that runs on click itself
    from click.exceptions import NoArgsIsHelpError, UsageError  # noqa: F401

from tasks.errors import MissingExtraError, PopsegError
from tasks.extras import extra_providing, missing_extra

DEBUG_VARIABLE = "POPSEG_DEBUG"


def emit(payload: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], None]) -> None:
    """The command's result: one JSON document on stdout, or ``render(payload)`` as text."""
    if as_json:
        _write_json(payload)
    else:
        render(payload)


def fail(error: PopsegError, as_json: bool = False, reported: bool = False) -> None:
    """Exit with ``error``'s exit code and its message on stderr. With ``as_json`` the error is
    also the JSON document on stdout, unless the command already wrote its result there
    (``reported``: e.g. a monitoring outcome that found drift)."""
    typer.echo(f"error: {error}", err=True)
    if as_json and not reported:
        _write_json(error_document(error))
    raise typer.Exit(error.exit_code)


def error_document(error: PopsegError) -> dict[str, Any]:
    document: dict[str, Any] = {
        "error": str(error),
        "error_type": type(error).__name__,
        "exit_code": error.exit_code,
    }
    failures = getattr(error, "failures", None)
    if failures:
        document["failures"] = failures
    return document


def usage_failure(error: UsageError, as_json: bool = False) -> NoReturn:
    """A usage error as one `error:` line (and the JSON document with ``as_json``), exit 2;
    instead of click's boxed message and usage text."""
    message = " ".join(error.format_message().split())
    where = f" (see '{error.ctx.command_path} -h')" if error.ctx is not None else ""
    typer.echo(f"error: {message}{where}", err=True)
    if as_json:
        _write_json(
            {"error": message, "error_type": type(error).__name__, "exit_code": error.exit_code}
        )
    raise typer.Exit(error.exit_code)


@contextlib.contextmanager
def command_errors(as_json: bool = False) -> Iterator[None]:
    """Runs a command's work: errors become exit codes (see the module docstring); with
    ``as_json`` anything printed meanwhile goes to stderr."""
    try:
        with _stdout_to_stderr(as_json):
            yield
    except (typer.Exit, typer.Abort):
        raise  # an exit the command chose
    except PopsegError as error:
        fail(_for_command(error), as_json)
    except UsageError as error:  # e.g. two spellings of one option that disagree
        usage_failure(error, as_json)
    except ModuleNotFoundError as error:
        extra = extra_providing(error.name)
        if extra is None:
            _unexpected(error, as_json)
        fail(missing_extra(extra, _command_path(), error.name), as_json)
    except Exception as error:
        _unexpected(error, as_json)


def _unexpected(error: Exception, as_json: bool) -> NoReturn:
    if debugging():
        raise error
    message = " ".join(str(error).split()) or "(no message)"
    hint = f"rerun with --verbose or {DEBUG_VARIABLE}=1 for the traceback"
    typer.echo(f"error: unexpected {type(error).__name__}: {message} ({hint})", err=True)
    if as_json:
        _write_json({"error": message, "error_type": type(error).__name__, "exit_code": 1})
    raise typer.Exit(1) from None


def _for_command(error: PopsegError) -> PopsegError:
    """A missing extra named with the command that needs it: "popseg score --engine dask
    needs the 'dask' extra: ..."."""
    if not isinstance(error, MissingExtraError) or error.extra is None:
        return error
    separator = " " if error.feature.startswith("-") else ": "
    feature = f"{_command_path()}{separator}{error.feature}"
    return missing_extra(error.extra, feature, error.module)


def _command_path() -> str:
    """``popseg`` and the running (sub)command's names, however popseg was started."""
    names = []
    context = get_current_context(silent=True)
    while context is not None and context.parent is not None:
        names.append(context.info_name or "")
        context = context.parent
    return " ".join(["popseg", *reversed(names)])


def debugging() -> bool:
    """``POPSEG_DEBUG`` set (not empty, not 0), or ``popseg --verbose``."""
    if os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
        return True
    context = get_current_context(silent=True)
    return bool(context and context.find_root().params.get("verbose"))


@contextlib.contextmanager
def _stdout_to_stderr(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _write_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    return str(value)
