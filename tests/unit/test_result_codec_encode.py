"""The result codec writes its document without extra copies of the arrays' base64, and the
bytes are still the plain JSON document they always were (old cache entries stay readable)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np

from flows import result_codec
from tasks.cluster import KFit


def _document_as_before(obj) -> bytes:
    arrays: list[np.ndarray] = []
    tree = result_codec._Encoder(arrays, result_codec.result_types(), None).value(obj)
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **{f"a{i}": a for i, a in enumerate(arrays)})
    document = {
        "format": result_codec.FORMAT,
        "root": tree,
        "arrays": base64.b64encode(buffer.getvalue()).decode("ascii"),
    }
    return json.dumps(document, allow_nan=False, separators=(",", ":")).encode()


def _fit() -> KFit:
    rng = np.random.default_rng(0)
    return KFit(
        k=3,
        centroids=rng.normal(size=(3, 4)),
        labels=rng.integers(0, 3, size=1000),
        inertia=12.5,
        n_iter=7,
        metrics={"silhouette": 0.5, "dunn": float("nan")},
    )


def test_encoded_bytes_are_the_json_document_written_before():
    fit = _fit()
    assert result_codec.encode(fit) == _document_as_before(fit)


def test_encoded_result_is_valid_json_and_decodes_to_equal_arrays():
    fit = _fit()
    blob = result_codec.encode(fit)
    assert json.loads(blob)["format"] == result_codec.FORMAT
    back = result_codec.decode(blob)
    assert isinstance(back, KFit)
    np.testing.assert_array_equal(back.labels, fit.labels)
    np.testing.assert_array_equal(back.centroids, fit.centroids)
    assert back.inertia == fit.inertia and back.n_iter == fit.n_iter
