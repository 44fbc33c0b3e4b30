"""Package: assemble the fitted stages into one `SegmentationChain` (npz + json artifact)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.chain import SegmentationChain
from tasks.impute import ImputeResult
from tasks.reduce import ReduceResult
from tasks.scale import ScaleResult


def build_chain(
    feature_names: list[str],
    imputed: ImputeResult,
    scaled: ScaleResult,
    reduced: ReduceResult,
    centroids: np.ndarray,
    segment_ids: np.ndarray,
    metadata: dict[str, Any] | None = None,
) -> SegmentationChain:
    return SegmentationChain(
        feature_names=feature_names,
        fill_values=imputed.fill_values,
        log1p_mask=scaled.log1p_mask,
        clip_low=scaled.clip_low,
        clip_high=scaled.clip_high,
        scale_center=scaled.center,
        scale_scale=scaled.scale,
        pca_mean=reduced.mean,
        pca_components=reduced.components,
        centroids=centroids,
        segment_ids=segment_ids,
        metadata=metadata,
    )
