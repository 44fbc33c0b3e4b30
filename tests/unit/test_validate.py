import json
import time

import numpy as np
import pandas as pd
import pytest

from tasks.config import load_params
from tasks.errors import ConfigError, DataValidationError
from tasks.ingest import IngestedData
from tasks.validate import build_expectations, require_valid, run_validation


def _data(frame: pd.DataFrame) -> IngestedData:
    return IngestedData(
        frame=frame,
        id_column="id",
        feature_columns=[c for c in frame if c != "id"],
        source="mem.csv",
        md5="0",
    )


def _frame(n=20, **columns):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "x": rng.normal(size=n),
            "y": rng.uniform(0, 10, size=n),
        }
    )
    for name, values in columns.items():
        frame[name] = values
    return frame


def _run(frame, tmp_path, *overrides):
    p = load_params(overrides=list(overrides))
    return run_validation(_data(frame), p.data, p.validate_, "test-suite", root=tmp_path)


def test_clean_data_passes_and_suite_is_reused(tmp_path):
    report = _run(_frame(), tmp_path)
    assert report.success and report.failures == []
    assert report.evaluated == 4 + 4 * 2
    suite_file = tmp_path / "gx" / "expectations" / "test-suite.json"
    first = json.loads(suite_file.read_text())
    _run(_frame(), tmp_path)
    assert json.loads(suite_file.read_text())["id"] == first["id"]  # no UUID churn


def test_each_problem_is_reported_with_column_and_observed_value(tmp_path):
    frame = _frame(
        n=20,
        const=np.full(20, 3.0),
        empty=np.full(20, np.nan),
        infinite=np.r_[np.arange(19.0), np.inf],
    )
    frame.loc[3, "id"] = "r0"  # duplicate id
    frame.loc[5, "y"] = 50.0  # out of the configured range
    report = _run(frame, tmp_path, "validate.ranges={y: [0, 10]}")
    assert not report.success
    found = {(f["column"], f["expectation"]) for f in report.failures}
    assert ("id", "expect_column_values_to_be_unique") in found
    assert ("const", "expect_column_stdev_to_be_between") in found
    assert ("empty", "expect_column_proportion_of_non_null_values_to_be_between") in found
    assert ("infinite", "expect_column_values_to_be_between") in found
    assert ("y", "expect_column_values_to_be_between") in found
    by_column = {
        f["column"]: f
        for f in report.failures
        if f["expectation"] == "expect_column_values_to_be_between"
    }
    assert by_column["infinite"]["examples"] == [float("inf")]
    with pytest.raises(DataValidationError) as excinfo:
        require_valid(report, "mem.csv")
    text = str(excinfo.value)
    assert text.startswith("mem.csv: data validation failed")
    assert "column 'const': expect_column_stdev_to_be_between failed" in text
    assert "observed 0.0" in text
    assert len(excinfo.value.failures) == len(report.failures)


def test_too_few_rows_and_missing_fraction(tmp_path):
    frame = _frame(n=6)
    frame.loc[:3, "x"] = np.nan
    report = _run(frame, tmp_path, "validate.max_missing_fraction=0.5")
    failed = {(f["column"], f["expectation"]): f for f in report.failures}
    assert failed[(None, "expect_table_row_count_to_be_between")]["observed"] == 6
    assert failed[("x", "expect_column_proportion_of_non_null_values_to_be_between")][
        "observed"
    ] == pytest.approx(2 / 6)


def test_ranges_for_unknown_columns_are_config_errors():
    p = load_params(overrides=["validate.ranges={nope: [0, 1]}"])
    with pytest.raises(ConfigError, match="validate.ranges names column"):
        build_expectations(_data(_frame()), p.data, p.validate_)


def test_report_written_as_json(tmp_path):
    report = _run(_frame(), tmp_path)
    path = report.write_json(tmp_path / "out" / "validation.json")
    payload = json.loads(path.read_text())
    assert payload["success"] is True and payload["evaluated_expectations"] == report.evaluated
    assert payload["result"]["success"] is True


_CONCURRENT_VALIDATION = """
import sys, time
from pathlib import Path
import great_expectations  # imported before the start: GX's import time would stagger them
from tests.unit.test_validate import _frame, _run
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
report = _run(_frame(), Path(sys.argv[1]))
print(report.success)
"""


def test_processes_validating_at_once_share_the_gx_context(tmp_path):
    """Two trainings of one project validate at the same moment: GX's get-or-create of the
    suite in the shared file context is not atomic, so without popseg's lock one of them
    failed ('Cannot add ExpectationSuite ... because it already exists')."""
    import sys

    from tests import processes
    from tests.conftest import ROOT

    go = tmp_path / "go"
    command = [sys.executable, "-c", _CONCURRENT_VALIDATION, str(tmp_path), str(go)]
    validations = [processes.start(command, ROOT) for _ in range(4)]
    time.sleep(8)  # both past their imports, waiting for the start file
    go.touch()
    assert [out.strip() for out in processes.outputs(validations, timeout=120)] == ["True"] * 4
    suites = list((tmp_path / "gx" / "expectations").glob("*.json"))
    assert [path.name for path in suites] == ["test-suite.json"]


def test_above_gx_max_rows_the_row_checks_are_counted_and_agree_with_gx(tmp_path):
    n = 400
    frame = _frame(
        n=n,
        const=np.full(n, 3.0),
        gappy=np.where(np.arange(n) % 3 == 0, np.nan, 1.0 + np.arange(n)),
        infinite=np.r_[np.arange(n - 1.0), -np.inf],
        narrow=np.arange(n).astype(np.int16),  # not an accepted dtype (checked on the sample)
    )
    frame.loc[[3, 7], "id"] = "r0"  # three rows share an id
    frame.loc[[5, 9], "y"] = [50.0, -4.0]  # outside the configured range
    frame.loc[11, "id"] = None
    checks = ["validate.ranges={y: [0, 10]}", "validate.max_missing_fraction=0.2"]
    by_gx = _run(frame, tmp_path / "gx", *checks, "validate.gx_max_rows=1000")
    counted = _run(frame, tmp_path / "counted", *checks, "validate.gx_max_rows=100")

    assert "on_all_rows" not in by_gx.result
    assert (counted.result["rows"], counted.result["sample_rows"]) == (n, 100)
    assert not counted.success and counted.evaluated == by_gx.evaluated

    def failures(report):
        return {(f["expectation"], f["column"]): f for f in report.failures}

    assert failures(counted).keys() == failures(by_gx).keys()
    for key, gx_failure in failures(by_gx).items():
        ours = failures(counted)[key]
        if key[0] != "expect_column_values_to_be_in_type_list":
            assert ours["unexpected_count"] == gx_failure["unexpected_count"], key
        if isinstance(gx_failure["observed"], float):
            assert ours["observed"] == pytest.approx(gx_failure["observed"]), key
    unique = failures(counted)[("expect_column_values_to_be_unique", "id")]
    assert unique["unexpected_count"] == 3 and unique["examples"] == ["r0"]
    assert failures(counted)[("expect_column_values_to_be_between", "y")]["examples"] == [
        50.0,
        -4.0,
    ]
    # Every expectation's verdict is listed, as GX lists them (the HTML report shows them).
    verdicts = {
        (v["expectation_config"]["type"], v["expectation_config"]["kwargs"].get("column"))
        for v in counted.result["results"]
        if not v["success"]
    }
    assert verdicts == set(failures(counted))
    clean = _run(_frame(n=300), tmp_path / "clean", "validate.gx_max_rows=100")
    assert clean.success and clean.failures == []
