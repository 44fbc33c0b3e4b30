"""The CLI's one output helper (`flows/cli/output.py`): text and --json rendering, the exit
code of each user error in both modes, and unexpected exceptions as one line (a traceback only
when debugging). Exercised through a real Typer app built on the helper, and `popseg` itself."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from flows.cli import app as popseg_app
from flows.cli.output import command_errors, emit
from tasks import errors

ERROR_TYPES = [
    cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.PopsegError)
]


def _app(action) -> typer.Typer:
    """One command shaped like popseg's: work in command_errors, the result through emit."""
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.callback()
    def main(verbose: bool = typer.Option(False, "--verbose")) -> None:
        pass

    @app.command()
    def work(as_json: bool = typer.Option(False, "--json")) -> None:
        with command_errors(as_json):
            print("a library talking")  # what --json keeps off stdout
            payload = action()
        emit(payload, as_json, lambda p: typer.echo(f"answer {p['answer']}"))

    return app


def _invoke(action, *args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(_app(action), ["work", *args], env=env)


def test_every_error_class_has_its_own_exit_code():
    codes = {cls: cls.exit_code for cls in ERROR_TYPES}
    assert len(ERROR_TYPES) >= 12
    assert codes[errors.GateRefused] == 12 and codes[errors.ConfigError] == 2
    # Subclasses share their family's code (a CredentialsError is a DataError: 3).
    assert codes[errors.CredentialsError] == codes[errors.DataError] == 3


def test_result_as_text_and_as_one_json_document():
    text = _invoke(lambda: {"answer": 42})
    assert text.exit_code == 0
    assert text.stdout == "a library talking\nanswer 42\n"
    as_json = _invoke(lambda: {"answer": 42}, "--json")
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout) == {"answer": 42}  # the print went to stderr
    assert "a library talking" in as_json.stderr


@pytest.mark.parametrize("error_type", ERROR_TYPES, ids=lambda cls: cls.__name__)
def test_user_error_exit_code_is_the_same_in_text_and_json(error_type):
    def action():
        raise error_type("data.csv: column 'x' is bad")

    text = _invoke(action)
    as_json = _invoke(action, "--json")
    assert text.exit_code == as_json.exit_code == error_type.exit_code
    for result in (text, as_json):
        errors_said = [line for line in result.stderr.splitlines() if line.startswith("error")]
        assert errors_said == ["error: data.csv: column 'x' is bad"]
        assert "Traceback" not in result.stderr + result.stdout
    assert "answer" not in text.stdout
    assert json.loads(as_json.stdout) == {
        "error": "data.csv: column 'x' is bad",
        "error_type": error_type.__name__,
        "exit_code": error_type.exit_code,
    }


def test_validation_failures_are_in_the_json_document():
    failures = [{"expectation": "expect_column_stdev_to_be_between", "column": "c"}]

    def action():
        raise errors.DataValidationError("data.csv: 1 expectation failed", failures)

    result = _invoke(action, "--json")
    assert result.exit_code == 4
    assert json.loads(result.stdout)["failures"] == failures


def test_unexpected_exception_is_exit_1_and_one_line():
    def action():
        raise RuntimeError("lost\nkey")

    result = _invoke(action)
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and lines[0].startswith("error: unexpected RuntimeError: lost key (")
    assert "POPSEG_DEBUG=1" in lines[0] and "Traceback" not in result.stderr
    as_json = _invoke(action, "--json")
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["error_type"] == "RuntimeError"


@pytest.mark.parametrize(
    ("args", "env"), [(("--verbose", "work"), None), (("work",), {"POPSEG_DEBUG": "1"})]
)
def test_unexpected_exception_keeps_its_traceback_when_debugging(args, env):
    def action():
        raise KeyError("lost")

    result = CliRunner().invoke(_app(action), list(args), env=env)
    assert result.exit_code == 1
    assert isinstance(result.exception, KeyError)  # re-raised: Python prints the traceback


def test_an_exit_code_the_command_chose_passes_through():
    def action():
        raise typer.Exit(12)

    assert _invoke(action, "--json").exit_code == 12


@pytest.mark.parametrize("as_json", [False, True])
def test_popseg_refuses_a_bad_key_before_any_work(project_dir, as_json):
    args = ["train", "--data", "x.csv", "--set", "cluster.k_mx=3"] + (["--json"] * as_json)
    result = CliRunner().invoke(popseg_app, args)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "unknown key cluster.k_mx" in result.stderr
    if as_json:
        document = json.loads(result.stdout)
        assert document["error_type"] == "ConfigError" and document["exit_code"] == 2
    else:
        assert result.stdout == ""


REFUSED_BEFORE_ANY_WORK = [
    (["train", "--data", "missing.csv"], 3),
    (["train", "--data", "missing", "--engine", "dask"], 3),
    (["run", "--set", "cluster.k_mx=1"], 2),
    (["monitor", "--data", "missing.csv"], 3),
    (["score", "--data", "missing.csv", "-o", "out.csv"], 3),
    (["promote", "--set", "nosuch.key=1"], 2),
    (["deploy", "--set", "nosuch.key=1"], 2),
    (["lineage", "1", "--set", "nosuch.key=1"], 2),
    (["report", "--set", "nosuch.key=1"], 2),
    (["serve", "--set", "nosuch.key=1"], 2),
    (["stage", "train", "--set", "nosuch.key=1"], 2),
]

_REFUSAL_PROBE = """
import json, sys
from typer.testing import CliRunner
from flows.cli import app
seen = []
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(app, args)
    loaded = sorted(n for n in ("prefect", "mlflow", "great_expectations") if n in sys.modules)
    seen.append([result.exit_code, loaded])
print(json.dumps(seen))
"""


def test_bad_input_is_refused_before_prefect_or_mlflow_is_imported(tmp_path):
    """One fresh interpreter runs each refusal in turn: none may have loaded Prefect, MLflow or
    Great Expectations (Prefect's import alone takes seconds; its server more)."""
    import subprocess
    import sys

    commands = [args for args, _ in REFUSED_BEFORE_ANY_WORK]
    probe = subprocess.run(
        [sys.executable, "-c", _REFUSAL_PROBE, json.dumps(commands)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    assert seen == [[code, []] for _, code in REFUSED_BEFORE_ANY_WORK]
