"""The optional extras (`tasks/extras.py`): `require` passes where the extra is installed (the
development environment has them all), names the extra and its pip command where it is not,
and the CLI's output helper turns a missing extra, also one only noticed at an import, into
one line with exit code 15 naming the command, in text and --json modes alike."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from flows.cli.output import command_errors, emit
from tasks import extras
from tasks.errors import MissingExtraError


def _app(action) -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.callback()
    def main() -> None:
        pass

    @app.command()
    def work(as_json: bool = typer.Option(False, "--json")) -> None:
        with command_errors(as_json):
            action()
        emit({}, as_json, lambda _: None)

    return app


def _invoke(action, *args: str):
    return CliRunner().invoke(_app(action), ["work", *args])


def _error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error")]


@pytest.mark.parametrize("extra", sorted(extras.EXTRAS))
def test_installed_extras_pass(extra):
    extras.require(extra, "--anything")


def test_a_missing_extra_names_itself_and_its_pip_command(monkeypatch):
    monkeypatch.setitem(extras.EXTRAS, "dask", ("popseg_no_such_module",))
    with pytest.raises(MissingExtraError) as raised:
        extras.require("dask", "--engine dask")
    assert str(raised.value) == "--engine dask needs the 'dask' extra: pip install 'popseg[dask]'"
    assert raised.value.exit_code == 15 and raised.value.extra == "dask"


@pytest.mark.parametrize("as_json", [False, True])
def test_cli_names_the_command_needing_the_extra(monkeypatch, as_json):
    monkeypatch.setitem(extras.EXTRAS, "dask", ("popseg_no_such_module",))
    result = _invoke(lambda: extras.require("dask", "--engine dask"), *["--json"] * as_json)
    message = "popseg work --engine dask needs the 'dask' extra: pip install 'popseg[dask]'"
    assert result.exit_code == 15
    assert _error_lines(result) == [f"error: {message}"]
    if as_json:
        assert json.loads(result.stdout) == {
            "error": message,
            "error_type": "MissingExtraError",
            "exit_code": 15,
        }


def test_cli_names_a_path_needing_the_extra(monkeypatch):
    monkeypatch.setitem(extras.EXTRAS, "aws", ("popseg_no_such_module",))
    result = _invoke(lambda: extras.require("aws", "s3://bucket/data.csv"))
    assert result.exit_code == 15
    assert _error_lines(result) == [
        "error: popseg work: s3://bucket/data.csv needs the 'aws' extra: pip install 'popseg[aws]'"
    ]


def test_an_import_of_an_extras_module_failing_late_is_still_one_line():
    def action():
        raise ModuleNotFoundError("No module named 's3fs'", name="s3fs.core")

    result = _invoke(action)
    assert result.exit_code == 15
    assert _error_lines(result) == [
        "error: popseg work needs the 'aws' extra (no module 's3fs.core'): "
        "pip install 'popseg[aws]'"
    ]


def test_any_other_missing_module_is_a_bug_not_an_extra():
    def action():
        raise ModuleNotFoundError("No module named 'numpyy'", name="numpyy")

    result = _invoke(action)
    assert result.exit_code == 1
    assert _error_lines(result)[0].startswith("error: unexpected ModuleNotFoundError")


def test_extra_providing_maps_modules_to_extras():
    assert extras.extra_providing("distributed.client") == "dask"
    assert extras.extra_providing("botocore.exceptions") == "aws"
    assert extras.extra_providing("dvc") == "dvc"
    assert extras.extra_providing("pandas") is None
    assert extras.extra_providing(None) is None
