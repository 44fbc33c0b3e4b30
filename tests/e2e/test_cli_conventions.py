"""The conventions every `popseg` command follows (flows/cli/options.py, flows/cli/output.py):
`--version`, `-h` as `--help`, flags shown as flags, help that wraps at the terminal's width,
enumerated options as choices (listed, completed, their errors naming the valid values), one
spelling for the model version and the endpoint name (the older ones still taken), `--set`
wherever params are read, and each exit code the same in text and --json mode and documented
in the README. In-process (Typer's runner) on real projects and a real trained store."""

from __future__ import annotations

import json
import re
from importlib.metadata import version
from pathlib import Path
from typing import get_args

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from flows.cli import app
from flows.cli import options as cli_options
from tasks import errors

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, columns: int = 80):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": str(columns)})


def _command_paths() -> list[tuple[str, ...]]:
    """Every command, as the words that call it (`stage` and its commands included)."""
    root = typer.main.get_command(app)
    paths: list[tuple[str, ...]] = [()]
    for name, command in root.commands.items():
        paths.append((name,))
        for sub in getattr(command, "commands", {}):
            paths.append((name, sub))
    return paths


COMMAND_PATHS = _command_paths()


def test_version_is_the_package_version():
    result = _run("--version")
    assert result.exit_code == 0
    assert result.stdout == f"popseg {version('popseg')}\n"


def test_every_command_is_listed():
    names = {path[-1] for path in COMMAND_PATHS if path}
    assert {"run", "train", "promote", "deploy", "undeploy", "rollback", "score"} <= names
    assert {"lineage", "report", "monitor", "serve", "ui", "stage", "ingest"} <= names


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p) or "popseg")
def test_dash_h_is_help_with_flags_shown_as_flags(path):
    short = _run(*path, "-h")
    assert short.exit_code == 0, short.output
    assert short.stdout == _run(*path, "--help").stdout
    assert f"Usage: {' '.join(('popseg', *path))} " in short.stdout
    # A flag takes no value: Typer would show `--json <bool>`.
    assert "<bool>" not in short.stdout
    lines = short.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    for flag in ("--json", "--help"):
        row = next((line for line in lines if f" {flag} " in line), None)
        if row is not None:
            assert "<" not in row, row


@pytest.mark.parametrize("path", [p for p in COMMAND_PATHS if p], ids=" ".join)
def test_help_text_wraps_at_the_terminal_width(path):
    """Docstrings break lines mid-sentence; on a wide terminal each paragraph of a command's
    help is one line, in its own page and in the list of its group."""
    command = typer.main.get_command(app)
    for word in path:
        command = command.commands[word]
    paragraphs = command.help.split("\n\n")
    assert all("\n" not in paragraph for paragraph in paragraphs)
    page = _run(*path, "-h", columns=400).stdout
    for paragraph in paragraphs:
        assert paragraph in page, paragraph
    listing = _run(*path[:-1], "-h", columns=400).stdout
    assert paragraphs[0] in listing


def test_the_choices_are_the_pipelines_own_lists():
    from flows.schedules import DEPLOYMENTS
    from tasks.config import DataConfig, DeployConfig
    from tasks.deploy import TARGETS
    from tasks.engine import ENGINES
    from tasks.ingest import BUNDLED_DATASETS

    assert cli_options.DATASETS == BUNDLED_DATASETS
    assert get_args(DataConfig.model_fields["dataset"].annotation) == cli_options.DATASETS
    assert tuple(TARGETS) == cli_options.TARGETS
    assert get_args(DeployConfig.model_fields["target"].annotation) == cli_options.TARGETS
    assert cli_options.ENGINES == ENGINES
    assert cli_options.DEPLOYMENTS == DEPLOYMENTS


BAD_CHOICES = [
    (["deploy", "--target", "k8s"], "--target", "'k8s'", cli_options.TARGETS),
    (["undeploy", "--target", "k8s"], "--target", "'k8s'", cli_options.TARGETS),
    (["endpoints", "--target", "k8s"], "--target", "'k8s'", cli_options.TARGETS),
    (["rollback", "--target", "k8s"], "--target", "'k8s'", cli_options.TARGETS),
    (["score", "--data", "x", "-o", "y", "--target", "k8s"], "--target", "'k8s'", ("local",)),
    (["score", "--data", "x", "-o", "y", "--engine", "spark"], "--engine", "'spark'", ("dask",)),
    (["train", "--data", "x", "--engine", "spark"], "--engine", "'spark'", cli_options.ENGINES),
    (["run", "--dataset", "iris"], "--dataset", "'iris'", cli_options.DATASETS),
    (["serve", "--only", "nightly"], "--only", "'nightly'", cli_options.DEPLOYMENTS),
]


@pytest.mark.parametrize(("args", "option", "value", "choices"), BAD_CHOICES)
def test_a_bad_choice_is_one_line_naming_the_valid_values(
    project_dir, args, option, value, choices
):
    text = _run(*args)
    as_json = _run(*args, "--json") if args[0] != "serve" else None  # serve has no --json
    assert text.exit_code == 2
    for result in (text, as_json) if as_json else (text,):
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert option in lines[0] and value in lines[0]
        assert all(choice in lines[0] for choice in choices), lines[0]
    assert text.stdout == ""
    if as_json:
        assert as_json.exit_code == 2
        document = json.loads(as_json.stdout)
        assert document["exit_code"] == 2 and value in document["error"]
    assert sorted(p.name for p in project_dir.iterdir()) == ["params.yaml"]  # nothing written


def test_choices_are_shown_and_completed():
    assert all(name in _run("run", "-h").stdout for name in cli_options.DATASETS)
    assert "<local|sagemaker>" in _run("deploy", "-h").stdout
    assert "<memory|dask>" in _run("train", "-h").stdout
    for words, expected in [
        ("popseg deploy --target ", ["local", "sagemaker"]),
        ("popseg train --engine ", ["memory", "dask"]),
        ("popseg run --dataset ", list(cli_options.DATASETS)),
        ("popseg serve --only ", list(cli_options.DEPLOYMENTS)),
        ("popseg undep", ["undeploy"]),
    ]:
        # COMP_CWORD: the index of the word being completed (a new one after a space).
        cword = len(words.split()) - (not words.endswith(" "))
        env = {"_POPSEG_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
        result = CliRunner().invoke(app, [], prog_name="popseg", env=env)
        assert result.stdout.split() == expected, words


def test_completion_can_be_installed():
    root = _run("-h").stdout
    assert "--install-completion" in root and "--show-completion" in root
    script = _run("--show-completion", "bash")
    assert script.exit_code == 0
    assert "_popseg_completion" in script.stdout and "_POPSEG_COMPLETE" in script.stdout


# Each case: the arguments, the exit code, the error type in the --json document.
ERROR_CASES = [
    (["deploy", "--target", "k8s"], 2, "BadParameter"),
    (["train"], 2, "MissingParameter"),
    (["train", "--data", "x.csv", "--nosuch"], 2, "NoSuchOption"),
    (["promote", "--version", "1", "--model-version", "2"], 2, "UsageError"),
    (["train", "--data", "x.csv", "--set", "nosuch.key=1"], 2, "ConfigError"),
    (["score", "--data", "x.csv", "-o", "y.csv", "--set", "nosuch.key=1"], 2, "ConfigError"),
    (["train", "--data", "missing.csv"], 3, "DataError"),
    (["deploy", "--model-version", "7"], 5, "RegistryError"),
    (["lineage", "--model-version", "7"], 5, "RegistryError"),
    (["undeploy", "--endpoint-name", "nope"], 8, "EndpointError"),
    (["report", "--output", "report.txt"], 10, "ReportError"),
    (["promote", "--model-version", "1", "--set", "promote.min_silhouette=0.99"], 12, None),
]


@pytest.mark.parametrize(("args", "code", "error_type"), ERROR_CASES, ids=lambda v: str(v))
def test_exit_code_is_the_same_in_text_and_json(trained_project, args, code, error_type):
    text = _run(*args)
    as_json = _run(*args, "--json")
    assert text.exit_code == as_json.exit_code == code, text.stderr + as_json.stderr
    assert "Traceback" not in text.output + as_json.output
    document = json.loads(as_json.stdout)
    if error_type is None:  # the gate's refusal is a result: the decision, then exit 12
        assert document["passed"] is False and document["reasons"]
        assert "NOT promoted" in text.stdout
        return
    assert (document["error_type"], document["exit_code"]) == (error_type, code)
    for result in (text, as_json):
        assert result.stderr.strip().splitlines()[-1].startswith("error: ")


def _readme_exit_codes() -> dict[int, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| (\d+) \|(.*)\|$", section, flags=re.MULTILINE)
    return {int(code): row for code, row in rows}


def test_every_exit_code_is_documented():
    documented = _readme_exit_codes()
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, errors.PopsegError):
            assert f"`{cls.__name__}`" in documented.get(cls.exit_code, ""), cls.__name__
    assert {0, 1, 2} <= set(documented)
    assert "usage" in documented[2].lower()


def test_set_is_taken_wherever_params_are_read(project_dir):
    """A bad key is refused by every command that reads params (before any work)."""
    for args in (
        ["score", "--data", "x.csv", "-o", "y.csv"],
        ["rollback", "-n", "demo"],
        ["undeploy", "-n", "demo"],
        ["package", "-o", "dist"],
        ["endpoints"],
    ):
        result = _run(*args, "--set", "nosuch.key=1")
        assert result.exit_code == 2, (args, result.output)
        assert "unknown section 'nosuch'" in result.stderr


def test_score_reads_the_set_overrides(trained_project):
    crime = pd.read_csv(trained_project / "data" / "raw" / "crime.csv")
    crime.to_csv(trained_project / "semicolons.csv", sep=";", index=False)
    args = ["score", "--data", "semicolons.csv", "-o", "scores.csv", "--json"]
    refused = _run(*args)
    assert refused.exit_code == 3
    scored = _run(*args, "--set", "data.delimiter=;")
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["rows"] == len(crime) == 50


def test_model_version_and_endpoint_name_spellings(trained_project):
    # promote: --model-version; --version (its spelling before) gives the same decision.
    new = json.loads(_run("promote", "--model-version", "2", "--json").stdout)
    old = json.loads(_run("promote", "--version", "2", "--json").stdout)
    assert new == old and new["model_version"] == "2"
    # lineage: --model-version; the positional version still taken.
    new = _run("lineage", "--model-version", "1", "--json")
    assert new.exit_code == 0, new.output
    assert json.loads(new.stdout) == json.loads(_run("lineage", "1", "--json").stdout)
    assert _run("lineage", "1", "--model-version", "2").exit_code == 2

    # The endpoint name: --endpoint-name / -n, the argument of undeploy/rollback still taken,
    # and without either deploy.endpoint_name (here through --set).
    first = json.loads(_run("deploy", "-n", "demo", "--model-version", "1", "--json").stdout)
    second = json.loads(_run("deploy", "--endpoint-name", "demo", "--json").stdout)
    assert (first["model_version"], second["model_version"]) == ("1", "2")
    clash = _run("rollback", "demo", "--endpoint-name", "other")
    assert clash.exit_code == 2 and "disagree" in clash.stderr
    rolled = _run("rollback", "--set", "deploy.endpoint_name=demo", "--json")
    assert rolled.exit_code == 0, rolled.output
    assert json.loads(rolled.stdout)["model_version"] == "1"
    gone = _run("undeploy", "--endpoint-name", "demo", "--json")
    assert gone.exit_code == 0, gone.output
    again = _run("undeploy", "demo")
    assert again.exit_code == 8 and "no local endpoint named 'demo'" in again.stderr
