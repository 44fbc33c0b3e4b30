"""The result cache's own format: popseg's prepare/train results go through JSON + npz and
come back equal; anything outside the allow-list of popseg types is refused, never imported."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows import result_cache, stages
from tasks.config import load_params

ROOT = Path(__file__).resolve().parents[2]
FAST = ["cluster.k_max=5", "evaluate.bootstrap_rounds=3", "impute.strategy=knn"]


def _assert_same(left, right, where="result"):
    assert type(left) is type(right), where
    if isinstance(left, np.ndarray):
        assert left.dtype == right.dtype and left.shape == right.shape, where
        if left.dtype == object:
            for i, (a, b) in enumerate(zip(left.ravel(), right.ravel(), strict=True)):
                _assert_same(a, b, f"{where}[{i}]")
        else:
            np.testing.assert_array_equal(left, right, err_msg=where)
    elif isinstance(left, pd.DataFrame):
        pd.testing.assert_frame_equal(left, right, check_exact=True, obj=where)
    elif isinstance(left, pd.Series):
        pd.testing.assert_series_equal(left, right, check_exact=True, obj=where)
    elif isinstance(left, dict):
        assert list(left) == list(right), where
        for key in left:
            _assert_same(left[key], right[key], f"{where}[{key!r}]")
    elif isinstance(left, (list, tuple)):
        assert len(left) == len(right), where
        for i, (a, b) in enumerate(zip(left, right, strict=True)):
            _assert_same(a, b, f"{where}[{i}]")
    elif isinstance(left, float) and np.isnan(left):
        assert np.isnan(right), where
    elif dataclasses.is_dataclass(left) or hasattr(left, "__dict__"):
        _assert_same(vars(left), vars(right), where)
    else:
        assert left == right, where


@pytest.fixture(scope="module")
def stage_results(tmp_path_factory):
    """prepare/train results of the real stages on a file with an id column, a text column
    (dropped) and missing values."""
    folder = tmp_path_factory.mktemp("serializer")
    rng = np.random.default_rng(11)
    values = np.vstack([rng.normal(0, 1, size=(25, 3)), rng.normal(6, 1, size=(25, 3))])
    values[[3, 17, 40], [0, 1, 2]] = np.nan
    frame = pd.DataFrame(values, columns=["alpha", "beta", "gamma"])
    frame.insert(0, "name", [f"shop-{i}" for i in range(50)])
    frame["region"] = ["north", "south"] * 25
    csv = folder / "shops.csv"
    frame.to_csv(csv, index=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        params = load_params(ROOT / "params.yaml", [*FAST, f"data.path={csv}"])
        data = stages.ingest_stage(params)
        prepared = stages.prepare_stage(params, data)
        trained = stages.train_stage(params, data, prepared)
    return prepared, trained


def test_prepare_and_train_results_round_trip_through_json_and_npz(stage_results):
    serializer = result_cache.PopsegJsonSerializer()
    for result in stage_results:
        blob = serializer.dumps(result)
        json.loads(blob)  # plain JSON text: Prefect embeds it in its record as a string
        assert b"pickle" not in blob
        _assert_same(result, serializer.loads(blob), type(result).__name__)
    prepared, trained = stage_results
    back = serializer.loads(serializer.dumps(trained))
    # The decoded chain still serves: same segments for the training rows.
    rows = trained.kept_frame[prepared.names].to_numpy(dtype=np.float64)
    np.testing.assert_array_equal(back.chain.predict(rows)[0], trained.chain.predict(rows)[0])
    assert back.kept_frame["name"].dtype == trained.kept_frame["name"].dtype


def test_stage_results_round_trip_with_every_array_in_a_file(stage_results, tmp_path, monkeypatch):
    from flows import result_codec

    monkeypatch.setattr(result_codec, "FILE_MIN_BYTES", 0)
    serializer = result_cache.PopsegJsonSerializer(arrays=str(tmp_path / "arrays"))
    for result in stage_results:
        blob = serializer.dumps(result)
        assert b'"$": "ndarray"' not in blob and b'"$":"ndarray"' not in blob
        _assert_same(result, serializer.loads(blob), type(result).__name__)
    assert any((tmp_path / "arrays").glob("*.npy"))


def test_edge_values_round_trip():
    value = {
        1: [np.nan, np.inf, -np.inf, 0.1, None, True],
        "t": (np.float32(1.5), np.float64(2.5), np.int64(-3), np.bool_(False), np.str_("x")),
        "objects": np.array(["a", None, 2.5], dtype=object),
        "frame": pd.DataFrame(
            {"c": pd.Categorical(["x", "y", "x"]), "s": pd.array(["p", None, "q"], "string")},
            index=pd.Index([10, 20, 30], name="row"),
        ),
        "series": pd.Series([1.0, np.nan], name="v"),
        "empty": np.zeros((0, 3)),
    }
    _assert_same(value, result_cache.decode(result_cache.encode(value)))


def _document(root, arrays=None):
    buffer = io.BytesIO()
    np.savez(buffer, **(arrays or {}))
    payload = {
        "format": result_cache.FORMAT,
        "root": root,
        "arrays": base64.b64encode(buffer.getvalue()).decode(),
    }
    return json.dumps(payload).encode()


@pytest.mark.parametrize(
    ("root", "arrays", "message"),
    [
        ({"$": "object", "type": "os.system", "state": {}}, None, "not a popseg result type"),
        ({"$": "object", "type": "Popen", "state": {}}, None, "not a popseg result type"),
        ({"$": "scalar", "dtype": "O", "v": 1}, None, "not allowed"),
        ({"$": "ndarray", "ref": "a0"}, {"a0": np.array([{"x": 1}], dtype=object)}, "pickle"),
        ({"$": "object", "type": "Selection", "state": {"k": 2}}, None, "fields"),
        ({"__class__": "subprocess.Popen", "data": ["touch", "x"]}, None, "unknown tag"),
    ],
)
def test_anything_outside_the_allow_list_is_refused(root, arrays, message):
    with pytest.raises(result_cache.CacheFormatError, match=message):
        result_cache.decode(_document(root, arrays))


def test_a_foreign_object_is_not_written():
    class Foreign:
        pass

    with pytest.raises(TypeError, match="cannot cache"):
        result_cache.encode({"x": Foreign()})
    with pytest.raises(TypeError, match="cannot cache"):
        result_cache.encode(np.zeros(2, dtype=[("a", "i4")]))
