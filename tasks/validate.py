"""Validate: a Great Expectations suite built from `params.yaml`, run on the ingested table.

The suite lives in a GX file context under ``gx/`` and is created once and then reused
(updated only when the params change it, so its ids don't churn). A failure raises
`DataValidationError` listing each failed expectation: column, expectation, observed value.
When the rows are not in one place (the Dask engine), the expectations in
`ROW_EXPECTATIONS` are evaluated from counts over every row (`failure_from_counts`) and GX
checks the rest (column set, dtypes) on a sample.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks.config import DataConfig, ValidateConfig
from tasks.errors import ConfigError, DataValidationError
from tasks.ingest import IngestedData

logger = logging.getLogger(__name__)

_DATASOURCE = "popseg"
_ASSET = "ingested_table"
_BATCH = "whole_table"
_FINITE_MAX = float(np.finfo(np.float64).max)


@dataclass(frozen=True)
class ValidationReport:
    success: bool
    suite_name: str
    evaluated: int
    failures: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)

    def summary_lines(self) -> list[str]:
        return [_describe_failure(failure) for failure in self.failures]

    def write_json(self, path: str | Path, include_result: bool = True) -> Path:
        """The outcome as JSON; without ``include_result`` (GX's full result, with its run
        ids and times) the file is the same bytes for the same data and suite."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "success": self.success,
            "suite": self.suite_name,
            "evaluated_expectations": self.evaluated,
            "failures": self.failures,
        }
        if include_result:
            payload["result"] = self.result
        path.write_text(json.dumps(payload, indent=2, default=str))
        return path


def _describe_failure(failure: dict[str, Any]) -> str:
    where = f"column {failure['column']!r}" if failure["column"] else "table"
    text = f"{where}: {failure['expectation']} failed"
    if failure.get("expected"):
        text += f" (expected {failure['expected']})"
    if failure.get("observed") is not None:
        text += f"; observed {failure['observed']}"
    if failure.get("examples"):
        text += f"; e.g. {failure['examples']}"
    return text


def build_expectations(
    data: IngestedData, data_config: DataConfig, config: ValidateConfig
) -> list[Any]:
    """The suite, from params: schema, dtypes, row count, missing fraction, spread, ranges,
    unique id, no inf."""
    import great_expectations.expectations as gxe

    columns = [data.id_column, *data.feature_columns]
    unknown_ranges = [name for name in config.ranges if name not in data.feature_columns]
    if unknown_ranges:
        raise ConfigError(
            f"validate.ranges names column(s) that are not features: {', '.join(unknown_ranges)}; "
            f"features: {', '.join(data.feature_columns)}"
        )
    min_rows = config.min_rows if config.min_rows is not None else data_config.min_rows
    expectations: list[Any] = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=list(config.expected_columns or columns), exact_match=True
        ),
        gxe.ExpectTableRowCountToBeBetween(min_value=min_rows, max_value=config.max_rows),
        gxe.ExpectColumnValuesToNotBeNull(column=data.id_column),
        gxe.ExpectColumnValuesToBeUnique(column=data.id_column),
    ]
    min_present = max(1.0 - config.max_missing_fraction, 1e-12)
    for name in data.feature_columns:
        expectations += [
            gxe.ExpectColumnValuesToBeInTypeList(
                column=name, type_list=["float64", "float32", "int64", "int32"]
            ),
            gxe.ExpectColumnProportionOfNonNullValuesToBeBetween(
                column=name, min_value=min_present
            ),
            # Finite bounds reject +/-inf; missing values are ignored here.
            gxe.ExpectColumnValuesToBeBetween(
                column=name, min_value=-_FINITE_MAX, max_value=_FINITE_MAX
            ),
            gxe.ExpectColumnStdevToBeBetween(
                column=name, min_value=config.min_std, strict_min=config.min_std == 0.0
            ),
        ]
        if name in config.ranges:
            low, high = config.ranges[name]
            expectations.append(
                gxe.ExpectColumnValuesToBeBetween(column=name, min_value=low, max_value=high)
            )
    return expectations


def _quiet_gx_environment() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def _context(root: str | Path):
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", project_root_dir=str(root))
    progress = context.variables.progress_bars
    globally = (
        progress.get("globally")
        if isinstance(progress, dict)
        else getattr(progress, "globally", None)
    )
    if globally is not False:
        context.variables.progress_bars = ProgressBarsConfig(
            globally=False, metric_calculations=False
        )
        context.variables.save()
    return context


def _batch_definition(context):
    source = context.data_sources.add_or_update_pandas(_DATASOURCE)
    try:
        asset = source.get_asset(_ASSET)
    except LookupError:
        asset = source.add_dataframe_asset(_ASSET)
    try:
        return asset.get_batch_definition(_BATCH)
    except KeyError:
        return asset.add_batch_definition_whole_dataframe(_BATCH)


def _expectation_key(expectation: Any) -> tuple[str, str]:
    config = _configuration(expectation)
    return config.type, json.dumps(config.kwargs, sort_keys=True, default=str)


def _get_or_update_suite(context, name: str, expectations: list[Any]):
    import great_expectations as gx

    try:
        suite = context.suites.get(name)
    except Exception:  # GX raises its own not-found types across versions
        suite = None
    wanted = sorted(_expectation_key(e) for e in expectations)
    if suite is not None and sorted(_expectation_key(e) for e in suite.expectations) == wanted:
        return suite
    if suite is not None:
        context.suites.delete(name)
    return context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))


def _get_or_update_definition(context, name: str, batch_definition, suite):
    import great_expectations as gx

    try:
        definition = context.validation_definitions.get(name)
        if definition.suite.id == suite.id:
            return definition
        context.validation_definitions.delete(name)
    except Exception:  # not found
        pass
    return context.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch_definition, suite=suite)
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


def _expected_text(kwargs: dict[str, Any]) -> str:
    if kwargs.get("min_value") == -_FINITE_MAX and kwargs.get("max_value") == _FINITE_MAX:
        return "finite values"
    parts = []
    for key in ("min_value", "max_value", "column_set", "type_list", "mostly"):
        if kwargs.get(key) is not None:
            value = kwargs[key]
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def run_validation(
    data: IngestedData,
    data_config: DataConfig,
    config: ValidateConfig,
    suite_name: str,
    root: str | Path = ".",
) -> ValidationReport:
    """Run the suite; returns the report (success or not). Use `require_valid` to stop on failure.

    Up to ``validate.gx_max_rows`` rows GX evaluates every expectation. Above, GX's per-row
    Python work (its stdev metric scans every value for ``Decimal`` objects) would dominate
    the run: the `ROW_EXPECTATIONS` are evaluated from counts over every row (`row_counts`,
    one vectorised pass) and GX checks the rest on a seeded sample (`report_from_counts`,
    as the Dask engine does)."""
    expectations = build_expectations(data, data_config, config)
    if len(data.frame) <= config.gx_max_rows:
        return _gx_validation(data, expectations, suite_name, root)
    from dataclasses import replace

    rows = np.random.default_rng(0).choice(len(data.frame), config.gx_max_rows, replace=False)
    sample = data.frame.iloc[np.sort(rows)].reset_index(drop=True)
    on_sample = _gx_validation(replace(data, frame=sample), expectations, suite_name, root)
    counts = row_counts(data, config.ranges)
    return report_from_counts(
        expectations,
        counts,
        on_sample,
        suite_name,
        data.feature_columns,
        {"execution_engine": "memory", "rows": counts.rows, "sample_rows": len(sample)},
    )


@dataclass(frozen=True)
class ColumnCounts:
    """Per feature column: missing and infinite values and the sample standard deviation
    (ddof 1) of the finite ones; what `failure_from_counts` reads as ``counts.moments``."""

    n_missing: np.ndarray
    n_posinf: np.ndarray
    n_neginf: np.ndarray
    sample_std: np.ndarray


@dataclass
class RowCounts:
    """What `ROW_EXPECTATIONS` check, over every row (the fields of the Dask engine's
    `tasks.dask_engine.stats.ValidationCounts`)."""

    rows: int
    id_nulls: int
    id_null_examples: list[int]  # data row numbers (1-based)
    moments: ColumnCounts
    out_of_range: dict[str, int] = field(default_factory=dict)
    range_examples: dict[str, list[float]] = field(default_factory=dict)
    duplicate_ids: int = 0
    duplicate_examples: list[str] = field(default_factory=list)


def row_counts(
    data: IngestedData, ranges: dict[str, tuple[float | None, float | None]]
) -> RowCounts:
    """`RowCounts` of an in-memory table: id nulls and duplicates, and per feature column
    its missing/infinite values, spread and values outside ``validate.ranges``; numpy, one
    column at a time (temporaries of one column, no copy of the table)."""
    frame, names = data.frame, data.feature_columns
    ids = frame[data.id_column]
    missing_ids = ids.isna().to_numpy()
    repeated = ids[ids.duplicated(keep=False).to_numpy() & ~missing_ids]
    d = len(names)
    missing, posinf, neginf, std = np.zeros(d), np.zeros(d), np.zeros(d), np.full(d, np.nan)
    out_of_range: dict[str, int] = {}
    range_examples: dict[str, list[float]] = {}
    for j, name in enumerate(names):
        column = frame[name].to_numpy(dtype=np.float64)
        finite = np.isfinite(column)
        missing[j] = np.isnan(column).sum()
        posinf[j], neginf[j] = (column == np.inf).sum(), (column == -np.inf).sum()
        if finite.sum() > 1:
            std[j] = column[finite].std(ddof=1)
        if name in ranges:
            low, high = ranges[name]
            with np.errstate(invalid="ignore"):
                bad = ~np.isnan(column) & (
                    (column < low if low is not None else False)
                    | (column > high if high is not None else False)
                )
            out_of_range[name] = int(bad.sum())
            range_examples[name] = column[bad][:5].tolist()
    return RowCounts(
        rows=len(frame),
        id_nulls=int(missing_ids.sum()),
        id_null_examples=(np.flatnonzero(missing_ids)[:5] + 1).tolist(),
        moments=ColumnCounts(missing, posinf, neginf, std),
        out_of_range=out_of_range,
        range_examples=range_examples,
        duplicate_ids=len(repeated),
        duplicate_examples=repeated.astype(str).drop_duplicates().head(5).tolist(),
    )


def report_from_counts(
    expectations: list[Any],
    counts: Any,
    on_sample: ValidationReport,
    suite_name: str,
    feature_columns: list[str],
    result: dict[str, Any],
) -> ValidationReport:
    """The suite's report when `ROW_EXPECTATIONS` were counted over every row (``counts``: a
    `RowCounts`, or the Dask engine's ValidationCounts) and GX ran on a sample (``on_sample``: the
    other expectations' verdicts). ``result`` says where; each expectation's verdict is
    listed in ``result["results"]`` in GX's form."""
    failures: list[dict[str, Any]] = []
    verdicts = []
    for expectation in expectations:
        kind, column = expectation_type(expectation)
        if kind in ROW_EXPECTATIONS:
            failure = failure_from_counts(expectation, counts, feature_columns)
            found = [failure] if failure is not None else []
        else:
            found = [
                failure
                for failure in on_sample.failures
                if failure["expectation"] == kind and failure["column"] == column
            ]
        failures += found
        config = _configuration(expectation)
        verdicts.append(
            {
                "success": not found,
                "expectation_config": {"type": kind, "kwargs": _jsonable_kwargs(config.kwargs)},
            }
        )
    return ValidationReport(
        success=not failures,
        suite_name=suite_name,
        evaluated=len(expectations),
        failures=failures,
        result={
            **result,
            "success": not failures,
            "results": verdicts,
            "on_all_rows": sorted(ROW_EXPECTATIONS),
            "on_the_sample": on_sample.result,
        },
    )


def _jsonable_kwargs(kwargs: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dict(kwargs), default=str))


def _gx_validation(
    data: IngestedData, expectations: list[Any], suite_name: str, root: str | Path
) -> ValidationReport:
    """GX runs ``expectations`` on ``data.frame`` (its file context under ``root``)."""
    from filelock import FileLock

    _quiet_gx_environment()
    # The file context in gx/ is shared by every popseg process of the project, and GX's
    # get-or-create of a suite is not atomic: two trainings at once both "add" it and one
    # fails. One validation at a time per project (they take about a second).
    lock_path = Path(root) / ".popseg" / "gx.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path)):
        context = _context(root)
        suite = _get_or_update_suite(context, suite_name, expectations)
        definition = _get_or_update_definition(
            context, f"{suite_name}-validation", _batch_definition(context), suite
        )
        # GX prints progress to stdout in some code paths; keep stdout clean for --json.
        stdout = sys.stdout
        sys.stdout = sys.stderr
        try:
            result = definition.run(batch_parameters={"dataframe": data.frame})
        finally:
            sys.stdout = stdout
    failures = []
    for item in result.results:
        if item.success:
            continue
        kwargs = dict(item.expectation_config.kwargs)
        details = item.result or {}
        exception = (item.exception_info or {}).get("exception_message")
        failures.append(
            {
                "expectation": item.expectation_config.type,
                "column": kwargs.get("column"),
                "expected": _expected_text(kwargs),
                "observed": _jsonable(details.get("observed_value", exception)),
                "unexpected_count": details.get("unexpected_count"),
                "examples": _jsonable(details.get("partial_unexpected_list", [])[:5]),
            }
        )
    return ValidationReport(
        success=bool(result.success),
        suite_name=suite_name,
        evaluated=len(result.results),
        failures=failures,
        result=result.to_json_dict(),
    )


def require_valid(report: ValidationReport, source: str) -> None:
    if report.success:
        return
    lines = [
        f"{source}: data validation failed ({len(report.failures)} of {report.evaluated} "
        f"expectations in suite {report.suite_name!r}):"
    ]
    lines += [f"  - {line}" for line in report.summary_lines()]
    raise DataValidationError("\n".join(lines), report.failures)


# Expectations that hold or fail by counts over the rows (evaluated from those counts when the
# rows are not in one place); the rest (column set, dtypes) are the same for every partition.
ROW_EXPECTATIONS = frozenset(
    {
        "expect_table_row_count_to_be_between",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_unique",
        "expect_column_proportion_of_non_null_values_to_be_between",
        "expect_column_values_to_be_between",
        "expect_column_stdev_to_be_between",
    }
)


def _configuration(expectation: Any) -> Any:
    return expectation.configuration if hasattr(expectation, "configuration") else expectation


def expectation_type(expectation: Any) -> tuple[str, str | None]:
    """(expectation type, its column or None)."""
    config = _configuration(expectation)
    return config.type, dict(config.kwargs).get("column")


def failure_from_counts(expectation: Any, counts: Any, names: list[str]) -> dict[str, Any] | None:
    """One of `ROW_EXPECTATIONS` evaluated from counts over every row (None when it holds).
    ``counts``: rows, id_nulls (+ examples), duplicate_ids (+ examples), out_of_range (+
    examples) per column, and ``moments`` per feature column (n_missing, n_posinf, n_neginf,
    sample_std)."""
    config = _configuration(expectation)
    kind, kwargs = config.type, dict(config.kwargs)
    column = kwargs.get("column")
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    moments = counts.moments
    j = names.index(column) if column in names else None
    if kind == "expect_table_row_count_to_be_between":
        ok = (low is None or counts.rows >= low) and (high is None or counts.rows <= high)
        return None if ok else failure_entry(expectation, counts.rows)
    if kind == "expect_column_values_to_not_be_null":
        if not counts.id_nulls:
            return None
        return failure_entry(
            expectation,
            f"{counts.id_nulls} of {counts.rows} rows",
            counts.id_nulls,
            [f"data row {row}" for row in counts.id_null_examples],
        )
    if kind == "expect_column_values_to_be_unique":
        if not counts.duplicate_ids:
            return None
        return failure_entry(
            expectation,
            f"{counts.duplicate_ids} rows share an id",
            counts.duplicate_ids,
            counts.duplicate_examples,
        )
    if j is None:
        return None
    infinite = int(moments.n_posinf[j] + moments.n_neginf[j])
    if kind == "expect_column_proportion_of_non_null_values_to_be_between":
        present = float(counts.rows - moments.n_missing[j]) / max(counts.rows, 1)
        ok = (low is None or present >= low) and (high is None or present <= high)
        return None if ok else failure_entry(expectation, present)
    if kind == "expect_column_values_to_be_between":
        if low == -_FINITE_MAX and high == _FINITE_MAX:
            if not infinite:
                return None
            examples = ["inf"] * min(int(moments.n_posinf[j]), 1)
            examples += ["-inf"] * min(int(moments.n_neginf[j]), 1)
            return failure_entry(expectation, None, infinite, examples)
        bad = counts.out_of_range.get(column, 0)
        if not bad:
            return None
        return failure_entry(expectation, None, bad, counts.range_examples.get(column, []))
    if kind == "expect_column_stdev_to_be_between":
        std = float(moments.sample_std[j]) if not infinite else float("nan")
        strict = bool(kwargs.get("strict_min", False))
        ok = (
            np.isfinite(std)
            and (low is None or (std > low if strict else std >= low))
            and (high is None or std <= high)
        )
        return None if ok else failure_entry(expectation, std)
    return None


def failure_entry(
    expectation: Any,
    observed: Any,
    unexpected_count: int | None = None,
    examples: list[Any] | None = None,
) -> dict[str, Any]:
    """A failed expectation of the suite, in the same form as the failures GX reports (for
    expectations checked outside GX, e.g. by the Dask engine's reductions over all rows)."""
    config = _configuration(expectation)
    kwargs = dict(config.kwargs)
    return {
        "expectation": config.type,
        "column": kwargs.get("column"),
        "expected": _expected_text(kwargs),
        "observed": _jsonable(observed),
        "unexpected_count": unexpected_count,
        "examples": _jsonable(list(examples or [])[:5]),
    }
