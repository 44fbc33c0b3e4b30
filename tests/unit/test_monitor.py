"""Label-free drift checks (`tasks/monitor.py`) on a hand-made chain: PSI against a direct numpy
computation, the segment-share, distance and missing-rate checks, small-sample thresholds,
bad inputs, capture logs written by the real local endpoint server, and the params section."""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2

from tasks.chain import SegmentationChain
from tasks.compute.drift import PSI_EPSILON
from tasks.config import MonitorConfig, load_params
from tasks.errors import ConfigError, DataError
from tasks.monitor import (
    UNSEEN_BUCKET,
    compute_drift,
    is_capture_log,
    level_shares,
    metric_key,
    psi_threshold,
    read_monitor_data,
)
from tests.chains import categorical_chain, identity_chain

NAMES = ["alpha", "beta", "gamma"]
CENTERS = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])


def make_chain() -> SegmentationChain:
    """Identity scaling and PCA, the three blob centres as centroids, segment ids 0, 1, 2."""
    return identity_chain(NAMES, CENTERS)


def blobs(n_per: int, seed: int, only: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    groups = [only] * 3 if only is not None else [0, 1, 2]
    return np.vstack([CENTERS[g] + rng.normal(size=(n_per, 3)) for g in groups])


@pytest.fixture
def chain():
    return make_chain()


@pytest.fixture
def reference():
    return blobs(200, seed=1)


def numpy_psi(expected: np.ndarray, actual: np.ndarray, bins: int) -> float:
    """PSI written out independently: quantile edges of `expected`, right-closed bins with open
    outer ends (pandas.cut), shares floored at PSI_EPSILON."""
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)))
    edges = np.concatenate([[-np.inf], edges[1:-1], [np.inf]])
    n_bins = len(edges) - 1
    e = np.bincount(pd.cut(expected, edges, labels=False), minlength=n_bins) / len(expected)
    a = np.bincount(pd.cut(actual, edges, labels=False), minlength=n_bins) / len(actual)
    e, a = np.maximum(e, PSI_EPSILON), np.maximum(a, PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def test_feature_psi_matches_numpy(chain, reference):
    new = blobs(200, seed=2)
    new[:, 2] = new[:, 2] * 1.5 + 0.5
    report = compute_drift(chain, reference, new, MonitorConfig())
    for j, feature in enumerate(report.features):
        assert feature.name == NAMES[j] and feature.bins == 10  # 600 rows a side: all 10 bins
        assert feature.psi == pytest.approx(numpy_psi(reference[:, j], new[:, j], 10), rel=1e-9)
    assert report.max_psi == pytest.approx(max(f.psi for f in report.features))
    # gamma was stretched and moved: only gamma crosses the PSI threshold
    assert [f.name for f in report.features if f.psi_drifted] == ["gamma"]


def test_identical_data_is_no_drift(chain, reference):
    report = compute_drift(chain, reference, reference.copy(), MonitorConfig())
    assert not report.drift and report.reasons == []
    assert all(f.psi == pytest.approx(0.0, abs=1e-12) for f in report.features)
    assert all(s.shift == 0.0 for s in report.segments)
    assert report.segment_psi == pytest.approx(0.0, abs=1e-12)
    assert report.distance["median_ratio"] == pytest.approx(1.0)
    payload = report.to_json()
    assert payload["drift"] is False and payload["reasons"] == []
    json.dumps(payload, allow_nan=False)  # plain JSON, no NaN


def test_same_population_sample_is_no_drift(chain, reference):
    report = compute_drift(chain, reference, blobs(200, seed=5), MonitorConfig())
    assert not report.drift, report.reasons
    assert all(f.psi < 0.1 for f in report.features)


def test_shifted_feature_is_drift_naming_it(chain, reference):
    new = blobs(200, seed=3)
    new[:, 1] += 3 * reference[:, 1].std()
    report = compute_drift(chain, reference, new, MonitorConfig())
    assert report.drift
    assert [f.name for f in report.features if f.psi_drifted] == ["beta"]
    beta = next(r for r in report.reasons if r.startswith("feature beta: PSI"))
    psi = report.features[1].psi
    assert beta == f"feature beta: PSI {psi:.3g} > 0.2"  # 600 vs 600 rows: plain threshold
    assert report.to_json()["features"]["beta"]["drifted"] is True


def test_rows_from_one_segment_shift_the_shares(chain, reference):
    report = compute_drift(chain, reference, blobs(100, seed=4, only=1), MonitorConfig())
    shares = {s.segment: (s.ref_share, s.new_share) for s in report.segments}
    ref_counts = np.bincount(chain.predict(reference)[0], minlength=3) / len(reference)
    assert [shares[s][0] for s in range(3)] == pytest.approx(ref_counts)
    assert shares[1][1] == 1.0 and shares[0][1] == 0.0
    assert [s.segment for s in report.segments if s.drifted] == [0, 1, 2]
    assert any(
        r.startswith("segment 1: share 0.333 -> 1, |shift| 0.667 > ") for r in report.reasons
    )
    e, a = np.maximum(ref_counts, PSI_EPSILON), np.maximum(np.eye(3)[1], PSI_EPSILON)
    assert report.segment_psi == pytest.approx(np.sum((a - e) * np.log(a / e)))
    assert any(r.startswith("segment shares: PSI") for r in report.reasons)


def test_missing_rate_increase(chain, reference):
    new = reference.copy()
    rows = np.random.default_rng(0).choice(len(new), size=180, replace=False)  # 30 %
    new[rows, 2] = np.nan
    report = compute_drift(chain, reference, new, MonitorConfig())
    gamma = report.features[2]
    assert (gamma.missing_rate_ref, gamma.missing_rate_new) == (0.0, pytest.approx(0.3))
    assert gamma.missing_drifted and not gamma.psi_drifted
    assert "feature gamma: missing rate 0 -> 0.3 (+0.3 > 0.1)" in report.reasons
    assert report.drift


def test_distance_to_centroid_shift(chain, reference):
    labels = chain.predict(reference)[0]
    spread = CENTERS[labels] + 1.8 * (reference - CENTERS[labels])  # each row 1.8x farther
    report = compute_drift(chain, reference, spread, MonitorConfig(psi_threshold=50.0))
    ref_distances = np.linalg.norm(reference - CENTERS[labels], axis=1)
    assert report.distance["ref_median"] == pytest.approx(np.median(ref_distances))
    assert report.distance["median_ratio"] == pytest.approx(1.8, rel=0.05)
    assert report.distance_drifted
    assert any(r.startswith("distance to assigned centroid: median") for r in report.reasons)


def test_small_samples_raise_the_thresholds(chain):
    reference, new = blobs(20, seed=11), blobs(17, seed=12)  # 60 vs 51 rows, same population
    config = MonitorConfig()
    report = compute_drift(chain, reference, new, config)
    assert all(f.bins == 5 for f in report.features)  # 51 rows // min_bin_rows 10
    expected = (1 / 60 + 1 / 51) * chi2.ppf(1 - 0.01 / 3, 4)
    assert report.features[0].psi_threshold == pytest.approx(expected)
    assert psi_threshold(60, 51, 5, None, 0.2) == 0.2
    assert not report.drift, report.reasons
    # The plain thresholds call sampling noise drift at this size.
    plain = compute_drift(chain, reference, new, MonitorConfig(significance=None))
    assert plain.drift and all(f.psi_threshold == 0.2 for f in plain.features)


# ----------------------------------------------------------------------------- bad inputs


def test_too_few_rows(chain, reference):
    with pytest.raises(DataError, match=r"new\.csv: 29 row\(s\); .*monitor\.min_rows=30"):
        compute_drift(chain, reference, reference[:29], MonitorConfig(), "new.csv")
    assert compute_drift(chain, reference, reference[:5], MonitorConfig(min_rows=5)).n_rows == 5


def test_file_errors(chain, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: the file is empty"):
        read_monitor_data(str(empty), chain)
    with pytest.raises(DataError, match="nope.csv: file not found"):
        read_monitor_data(str(tmp_path / "nope.csv"), chain)
    partial = tmp_path / "partial.csv"
    pd.DataFrame({"alpha": [1.0], "beta": [2.0]}).to_csv(partial, index=False)
    with pytest.raises(DataError, match=r"partial\.csv: missing feature column\(s\) gamma"):
        read_monitor_data(str(partial), chain)
    log = tmp_path / "capture.jsonl"
    log.write_text('{"captureData": {}}\n')
    with pytest.raises(DataError, match="line 1 is not an endpoint capture record"):
        read_monitor_data(str(log), chain)
    log.write_text("not json\n")
    with pytest.raises(DataError, match="line 1 is not JSON"):
        read_monitor_data(str(log), chain)


def test_table_files_parquet_and_csv(chain, tmp_path, reference):
    frame = pd.DataFrame(reference, columns=NAMES)
    frame.insert(0, "id", [f"r{i}" for i in range(len(frame))])
    frame.to_parquet(tmp_path / "new.parquet", index=False)
    frame[["gamma", "alpha", "beta"]].to_csv(tmp_path / "new.csv", index=False)  # any order
    for name in ("new.parquet", "new.csv"):
        data = read_monitor_data(str(tmp_path / name), chain)
        assert data.kind == "table" and data.source == str(tmp_path / name)
        np.testing.assert_allclose(data.values, reference)
        assert len(data.md5) == 32


# ----------------------------------------------------------------------------- capture logs


def post_with_capture(chain, tmp_path, capture, requests: list[tuple[str, str]]) -> list[int]:
    """Each ``(body, content type)`` of ``requests`` posted to the real local endpoint server
    serving ``chain`` with its capture log at ``capture``; the HTTP statuses, once the server
    has appended a capture line for every request (it writes each just after its reply)."""
    from tasks.serving.server import EndpointServer, Model

    model_dir = tmp_path / "model"
    chain.save(str(model_dir))
    options = argparse.Namespace(max_body_bytes=1 << 20, capture=str(capture))
    server = EndpointServer(("127.0.0.1", 0), "demo", Model(str(model_dir), "1"), options)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/invocations"
    try:
        statuses = [_post(url, body, kind) for body, kind in requests]
        deadline = time.monotonic() + 10
        while capture.read_text().count("\n") < len(requests) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        server.shutdown()
        server.server_close()
    return statuses


def _post(url, body: str, content_type: str) -> int:
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": content_type}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def test_capture_log_from_the_local_endpoint(chain, tmp_path):
    capture = tmp_path / "capture.jsonl"
    requests = [
        ("0,0,0\n10,0,1\n", "text/csv"),
        ("gamma,alpha\n5,\n", "text/csv"),  # header, any order, missing cells
        (json.dumps({"instances": [{"features": [1, 2, 3]}]}), "application/json"),
        (json.dumps([{"alpha": 4, "beta": 5, "gamma": 6}]), "application/json"),
        ("1,2\n", "text/csv"),  # wrong width: 400, skipped by monitor
    ]
    statuses = post_with_capture(chain, tmp_path, capture, requests)
    assert statuses == [200, 200, 200, 200, 400]
    data = read_monitor_data(str(capture), chain)
    assert data.kind == "capture" and data.notes == [
        "skipped 1 failed invocation(s) in the capture log"
    ]
    expected = [[0, 0, 0], [10, 0, 1], [np.nan, np.nan, 5], [1, 2, 3], [4, 5, 6]]

    def rows(values):  # capture lines may land in any order (one thread per request)
        return sorted(map(tuple, np.nan_to_num(np.asarray(values, dtype=float), nan=-1.0)))

    assert rows(data.values) == rows(expected)
    # Recognised by content too (no .jsonl suffix).
    renamed = tmp_path / "capture.log"
    renamed.write_bytes(capture.read_bytes())
    assert is_capture_log(str(renamed), renamed.read_bytes())
    assert read_monitor_data(str(renamed), chain).kind == "capture"
    assert not is_capture_log("x.csv", b"alpha,beta,gamma\n1,2,3\n")


def test_capture_log_failed_bad_and_incomplete_lines(chain, tmp_path):
    log = tmp_path / "c.jsonl"
    record = {
        "captureData": {
            "endpointInput": {"observedContentType": "text/csv", "data": "1,2\n", "encoding": "CSV"}
        },
        "eventMetadata": {"status": 400},
    }
    log.write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError, match=r"no successful invocations \(1 failed\)"):
        read_monitor_data(str(log), chain)
    record["eventMetadata"]["status"] = 200  # a request the model cannot read: named by line
    log.write_text("\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError, match="line 2: the captured request does not fit the model"):
        read_monitor_data(str(log), chain)
    # A log the endpoint is still appending to: the cut-off last line is left out.
    record["captureData"]["endpointInput"]["data"] = "1,2,3\n4,5,6\n"
    line = json.dumps(record)
    log.write_text(line + "\n" + line[:40])
    data = read_monitor_data(str(log), chain)
    assert data.values.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert data.notes == ["ignored the incomplete last line 2 of the capture log"]
    log.write_text(line[:40] + "\n" + line + "\n")  # elsewhere it is an error
    with pytest.raises(DataError, match="line 1 is not JSON"):
        read_monitor_data(str(log), chain)


# ----------------------------------------------------------------------------- params, names


def test_monitor_params_section(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: built-in defaults
    params = load_params(None, ["monitor.psi_threshold=0.3"])
    assert params.monitor.psi_threshold == 0.3 and params.monitor.min_rows == 30
    with pytest.raises(ConfigError, match="unknown key monitor.psi"):
        load_params(None, ["monitor.psi=0.3"])
    bad = tmp_path / "params.yaml"
    bad.write_text("monitor:\n  psi_treshold: 0.3\n")
    with pytest.raises(ConfigError, match=r"monitor\.psi_treshold: unknown key"):
        load_params(bad)
    bad.write_text("monitor:\n  distance_shift: 0.5\n")
    with pytest.raises(
        ConfigError, match=r"monitor\.distance_shift: Input should be greater than 1"
    ):
        load_params(bad)


def test_metric_key_sanitises_feature_names():
    assert metric_key("Murder") == "Murder"
    assert metric_key("state=IL (%)") == "state_IL ___"


# ----------------------------------------------------------------------------- categoricals


def _regions(levels: list[str | None], seed: int) -> np.ndarray:
    """Feature rows of `categorical_chain` (x ~ N(0, 1)) for these raw region values."""
    chain = categorical_chain()
    rng = np.random.default_rng(seed)
    columns = {"x": rng.normal(size=len(levels)), "region": levels}
    return chain.encode_columns(columns, len(levels)).values


def test_level_shares_end_with_the_unseen_bucket():
    block = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(level_shares(block), [0.25, 0.5, 0.25])


def test_categorical_columns_drift_by_psi_over_level_shares():
    chain = categorical_chain()
    reference = _regions(["MW"] * 100 + ["NE"] * 80 + [None] * 20, seed=1)
    same = compute_drift(
        chain, reference, _regions(["MW"] * 50 + ["NE"] * 40 + [None] * 10, 2), MonitorConfig()
    )
    region = next(f for f in same.features if f.name == "region")
    assert [f.name for f in same.features] == ["x", "region"]  # no PSI per indicator
    assert region.psi == pytest.approx(0.0, abs=1e-12)
    assert region.bins == 4 and not region.drifted
    assert region.missing_rate_ref == pytest.approx(0.1)
    # New data: NE has become rare, a fifth of the rows carry levels never seen.
    new = _regions(["MW"] * 100 + ["NE"] * 20 + [None] * 20 + ["XX"] * 40 + ["YY"] * 20, seed=3)
    report = compute_drift(chain, reference, new, MonitorConfig())
    region = next(f for f in report.features if f.name == "region")
    expected = np.array([0.5, 0.4, 0.1, PSI_EPSILON])
    actual = np.array([100, 20, 20, 60]) / 200
    assert region.psi == pytest.approx(
        float(np.sum((actual - expected) * np.log(actual / expected)))
    )
    assert region.levels == {
        "MW": (0.5, 0.5),
        "NE": (0.4, 0.1),
        "Unknown": (0.1, 0.1),
        UNSEEN_BUCKET: (0.0, 0.3),
    }
    assert region.drifted
    assert any(
        r.startswith("categorical column region: PSI over level shares") for r in report.reasons
    )
    payload = report.to_json()["features"]["region"]
    assert payload["kind"] == "categorical"
    assert payload["levels"][UNSEEN_BUCKET] == {"ref_share": 0.0, "new_share": 0.3}


def test_capture_logs_and_tables_of_raw_category_values(tmp_path):
    """Monitored data with raw values is encoded as the endpoint encodes it: a captured JSON
    request and a CSV table give the same feature rows, an unseen level none set."""
    chain = categorical_chain()
    body = json.dumps([{"x": 1, "region": "NE"}, {"x": 2, "region": "XX"}, {"x": 3}])
    record = {
        "captureData": {"endpointInput": {"observedContentType": "application/json", "data": body}},
        "eventMetadata": {"status": 200},
    }
    log = tmp_path / "capture.jsonl"
    log.write_text(json.dumps(record) + "\n")
    table = tmp_path / "new.csv"
    table.write_text("x,region\n1,NE\n2,XX\n3,\n")
    expected = [[1.0, 0.0, 1.0, 0.0], [2.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 1.0]]
    for path in (log, table):
        np.testing.assert_array_equal(read_monitor_data(str(path), chain).values, expected)
