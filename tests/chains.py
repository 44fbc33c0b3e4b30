"""Hand-made serving chains for tests: every transform the identity unless a test says
otherwise, so that expected segments and distances can be worked out by hand."""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.chain import SegmentationChain


def identity_chain(feature_names: list[str], centroids: Any, **overrides: Any) -> SegmentationChain:
    """Fill values 0, no log1p, no clipping, unit scaling and an identity PCA; the rows of
    ``centroids`` as the centroids, segment ids 0, 1, ... Any field can be overridden."""
    d = len(feature_names)
    centroids = np.asarray(centroids, dtype=float)
    values: dict[str, Any] = {
        "feature_names": feature_names,
        "fill_values": np.zeros(d),
        "log1p_mask": np.zeros(d, dtype=bool),
        "clip_low": np.full(d, -np.inf),
        "clip_high": np.full(d, np.inf),
        "scale_center": np.zeros(d),
        "scale_scale": np.ones(d),
        "pca_mean": np.zeros(d),
        "pca_components": np.eye(d),
        "centroids": centroids,
        "segment_ids": np.arange(len(centroids)),
        **overrides,
    }
    return SegmentationChain(**values)


CATEGORICAL_FEATURES = ["x", "region=MW", "region=NE", "region=Unknown"]


def categorical_chain() -> SegmentationChain:
    """A format-2 chain with one numeric feature ``x`` and the categorical column ``region``
    (levels MW, NE, Unknown), identity transforms; centroids: (0, MW) -> segment 0,
    (0, NE) -> 1, (10, Unknown) -> 2. A missing x is filled with 0."""
    return identity_chain(
        CATEGORICAL_FEATURES,
        [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [10.0, 0.0, 0.0, 1.0]],
        categories={"region": ["MW", "NE", "Unknown"]},
    )
