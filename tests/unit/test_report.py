"""The HTML report, rendered from hand-made data (no MLflow): self-contained, every segment
present, data-derived text escaped, sensible rounding and wording."""

from __future__ import annotations

import base64
import dataclasses
import io
import re
from dataclasses import replace

import pytest

from tasks import report
from tasks.errors import ReportError
from tasks.report import (
    FeatureComparison,
    Image,
    MonitorRecord,
    ReportData,
    SegmentProfile,
    Table,
    ValidationSummary,
)

EVIL = "<script>alert(1)</script>"


def _png() -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [1, 0])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=20)
    plt.close(fig)
    return buffer.getvalue()


def _segment(segment: int, size: int, examples: list[str]) -> SegmentProfile:
    traits = [
        {
            "feature": "Murder",
            "segment_mean": 14.67 + segment,
            "population_mean": 7.788,
            "z": 1.6,
            "direction": "higher",
        }
    ]
    return SegmentProfile(
        segment=segment,
        size=size,
        share=size / 50,
        sentence=report.segment_sentence(segment, size, size / 50, traits, ("state", "states")),
        traits=traits,
        comparisons=[
            FeatureComparison("Murder", 14.67 + segment, 7.788, 1.6, True),
            FeatureComparison("UrbanPop", 65.0, 65.54, -0.004, False),
            FeatureComparison("Density", 12.0, 149.2, None, False),
        ],
        examples=examples,
    )


@pytest.fixture(scope="module")
def data() -> ReportData:
    png = _png()
    images = {
        name: Image(name, title, caption, png)
        for name, (title, caption) in report.PLOTS.items()
        if name not in report.MIXTURE_PLOTS  # a k-means training's plots
    }
    return ReportData(
        model_name="popseg-segmentation",
        model_version="3",
        run_id="abc123",
        experiment_id="1",
        tracking_uri="sqlite:///mlflow.db",
        trained_at="2026-01-01 10:00 UTC",
        generated_at="2026-01-02 10:00 UTC",
        aliases=["champion"],
        gate={"gate_passed": "true", "gate_reasons": "silhouette 0.35 >= 0.25"},
        data_source="data/raw/crime.csv",
        data_md5="15f4f55730d96379247b8b572afa02aa",
        git_commit="0123abcd",
        id_column="State",
        row_noun=("state", "states"),
        n_rows=50,
        rows_used=50,
        features=["Murder", "UrbanPop", "Density"],
        validation=ValidationSummary(
            recorded=True,
            success=True,
            suite="popseg-crime",
            evaluated=2,
            failed=0,
            checks=[
                {"expectation": "column values to not be null", "column": "Murder", "passed": True},
                {"expectation": "table row count", "column": "", "passed": True},
            ],
        ),
        impute={"strategy": "median", "rows_in": 50, "rows_dropped": 0, "cells_filled": 0},
        impute_table=Table(
            ["feature", "missing", "missing share", "fill value"], [["Murder", 0, "0%", 7.25]]
        ),
        scale={"method": "standard", "log1p_columns": ["Density"], "clip_quantiles": None},
        reduce={"applied": True, "n_components": 2, "explained_variance": 0.87, "reason": "≥ 80%"},
        loadings=Table(["component", "Murder", "UrbanPop"], [["PC1", 0.7, -0.000001]]),
        selection={"k": 3, "criterion": "consensus", "reason": "k=3: chosen by 2 of 4 criteria"},
        candidates=Table(["criterion", "k it points to"], [["elbow", 3]]),
        sweep=Table(["k", "silhouette ↑"], [[2, 0.31], [3, 0.35]], highlight=1),
        metrics={"silhouette": 0.35, "calinski_harabasz": 33.3, "davies_bouldin": 0.9},
        segments=[
            _segment(0, 24, ["Oklahoma", "Kansas"]),
            _segment(1, 19, ["Maine", EVIL]),
            _segment(2, 7, ["Alabama"]),
        ],
        stability=0.82,
        stability_rounds=[0.8, 0.84],
        id_mapping={"method": "size order (no comparable champion)", "map": {"0": 0}},
        images=images,
        monitoring=[],
        notes=[],
    )


def test_html_loads_nothing_from_outside(data):
    html = report.render_html(data)
    assert html.startswith("<!DOCTYPE html>")
    lowered = html.lower()
    assert "<script" not in lowered and "<link" not in lowered and "@import" not in lowered
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//|ftp:)""", lowered)
    assert not re.search(r"url\(\s*['\"]?\s*(https?:|//)", lowered)
    # Every link is to an anchor in the page; every image is an embedded PNG.
    for link in re.findall(r"""href\s*=\s*["']([^"']*)""", html):
        assert link.startswith("#"), link
    sources = re.findall(r"""src\s*=\s*["']([^"']*)""", html)
    assert len(sources) == len(data.images)
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(b"\x89PNG")


def test_a_kmeans_report_says_k_means_and_shows_no_mixture_parts(data):
    html = report.render_html(data)
    assert "k-means, chosen by consensus" in html and "<td>k-means</td>" in html
    assert "Gaussian" not in html and 'id="membership"' not in html and "BIC" not in html


def test_a_mixture_report_shows_its_family_bic_curve_and_certainty(data):
    """What the report adds for a Gaussian mixture (the real training's report:
    tests/integration/test_report.py): the family and covariance, the BIC curve first among
    the k curves, and how sure the assignments are."""
    png = data.images["cluster_sizes"].png
    images = {
        **data.images,
        **{name: Image(name, *report.PLOTS[name], png) for name in report.MIXTURE_PLOTS},
    }
    mixture = replace(
        data,
        model=report.ModelFamily("gmm", "diag"),
        membership={
            "rows": 50,
            "mean": 0.91,
            "median": 0.97,
            "min": 0.42,
            "share_below_0.5": 0.02,
            "share_below_0.8": 0.16,
            "share_below_0.95": 0.3,
        },
        selection={"k": 3, "criterion": "bic", "reason": "k=3: lowest BIC (512.3)"},
        images=images,
    )
    html = report.render_html(mixture)
    assert "Gaussian mixture (diag covariance), chosen by bic" in html
    assert "<td>Gaussian mixture (diag covariance)</td>" in html
    assert "the k with the lowest BIC (Bayesian information criterion) made the choice" in html
    curves = html[html.index('id="choosing-k"') : html.index('id="membership"')]
    assert curves.index('alt="BIC by k"') < curves.index('alt="Elbow: inertia by k"')
    certainty = html[html.index('id="membership"') : html.index('id="stability"')]
    assert "<strong>16%</strong> of them are below 0.8" in certainty
    assert "0.91 on average" in certainty and "lowest 0.42" in certainty
    assert 'alt="How sure the assignments are"' in certainty
    assert len(re.findall(r"""src\s*=\s*["']data:image""", html)) == len(images)


def test_every_segment_has_a_section_and_a_sentence(data):
    html = report.render_html(data)
    for segment in data.segments:
        assert f'id="segment-{segment.segment}"' in html
        assert f"Segment {segment.segment} (" in html
    assert "Segment 1 (19 states, 38%): Murder higher (15.7 vs 7.8)." in html
    assert "How many segments, and why 3" in html and "k=3: chosen by 2 of 4 criteria" in html


def test_data_derived_text_is_escaped(data):
    evil = dataclasses.replace(
        data,
        data_source=EVIL,
        features=[EVIL],
        notes=[EVIL],
        monitoring=[MonitorRecord("r1", "2026-01-03 10:00 UTC", EVIL, 10, True, 0.6, [EVIL], "")],
    )
    html = report.render_html(evil)
    assert EVIL not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.lower()


def test_no_monitoring_runs_yet(data):
    html = report.render_html(data)
    assert "No monitoring runs yet for version 3" in html


def test_monitoring_history_table(data):
    records = [
        MonitorRecord(
            "r2",
            "2026-01-04 10:00 UTC",
            "new.csv",
            1200,
            True,
            0.61,
            ["Murder PSI 0.61 > 0.25"],
            "retrained: version 4 (promoted to champion)",
        ),
        MonitorRecord("r1", "2026-01-03 10:00 UTC", "old.csv", 50, False, 0.04, [], ""),
    ]
    html = report.render_html(dataclasses.replace(data, monitoring=records))
    assert "2 monitoring runs" in html and "1 found drift" in html
    assert "Murder PSI 0.61 &gt; 0.25" in html and "1,200" in html and "0.610" in html
    assert "retrained: version 4" in html
    assert "No monitoring runs yet" not in html


def test_rounding_and_wording():
    assert report.fmt_number(149.2244) == "149"
    assert report.fmt_number(12345.6) == "12,346"
    assert report.fmt_number(14.671) == "14.7"
    assert report.fmt_number(7.788) == "7.8"
    assert report.fmt_number(0.03421) == "0.034"
    assert report.fmt_number(0) == "0"
    assert report.fmt_number(float("nan")) == "–"
    assert report.fmt_signed(-0.004) == "0.0" and report.fmt_signed(1.66) == "+1.7"
    assert report.fmt_share(0.24) == "24%" and report.fmt_share(0.001) == "<1%"
    assert report.row_noun("State") == ("state", "states")
    assert report.row_noun("county") == ("county", "counties")
    assert report.row_noun("county_state") == ("row", "rows")
    assert report.row_noun("name") == ("row", "rows")
    traits = [
        {
            "feature": "Murder",
            "segment_mean": 14.67,
            "population_mean": 7.79,
            "direction": "higher",
        },
        {
            "feature": "UrbanPop",
            "segment_mean": 54.3,
            "population_mean": 65.5,
            "direction": "lower",
        },
    ]
    assert (
        report.segment_sentence(3, 12, 0.24, traits, ("state", "states"))
        == "Segment 3 (12 states, 24%): Murder higher (14.7 vs 7.8), UrbanPop lower (54.3 vs 65.5)."
    )
    assert report.segment_sentence(0, 1, 0.02, [], ("row", "rows")).startswith(
        "Segment 0 (1 row, 2%)"
    )


def test_sweep_table_shows_degenerate_components_as_a_count():
    import pandas as pd

    sweep = pd.DataFrame(
        {"bic": [812.25, 790.5], "degenerate_components": [0.0, 2.0]},
        index=pd.Index([2, 3], name="k"),
    )
    table = report._sweep_table(sweep, 3)
    assert table.columns == ["k", "BIC ↓", "degenerate components"]
    assert table.highlight == 1
    cells = [report.fmt_score(value) for value in table.rows[1][1:]]
    assert cells == ["790.500", "2"]
    assert report.fmt_score(0.25) == "0.250" and report.fmt_score(True) == "1.000"


def test_output_path_rules(tmp_path):
    assert report.output_path(None, "2") == report.default_output("2")
    assert report.output_path(tmp_path, "2") == tmp_path / "segmentation-report-v2.html"
    assert report.output_path(tmp_path / "new" / "r.HTML", "2") == tmp_path / "new" / "r.HTML"
    with pytest.raises(ReportError, match=r"\.html"):
        report.output_path(tmp_path / "report.pdf", "2")


def test_template_ships_inside_the_tasks_package():
    # The wheel packages `tasks/` whole (hatch: packages = ["flows", "tasks"]), template included.
    from importlib.resources import files

    assert files("tasks").joinpath("templates", report.TEMPLATE).is_file()
