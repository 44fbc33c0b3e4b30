"""Scale: optional log1p for skewed counts, optional quantile clipping, then an affine
scaler ``(x - center) / scale`` (standard, minmax [0,1], minmax_sym [-1,1], robust,
maxabs, none). Every method is stored as center/scale so serving needs numpy only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tasks.config import ScaleConfig
from tasks.errors import ConfigError


@dataclass(frozen=True)
class ScaleResult:
    values: np.ndarray
    log1p_mask: np.ndarray
    clip_low: np.ndarray
    clip_high: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)


def skewness(values: np.ndarray) -> np.ndarray:
    """Sample skewness per column (Fisher-Pearson, biased, as scipy.stats.skew)."""
    centered = values - values.mean(axis=0)
    second = (centered**2).mean(axis=0)
    third = (centered**3).mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        result = third / second**1.5
    return np.where(second > 0, result, 0.0)


def choose_log1p(values: np.ndarray, names: list[str], config: ScaleConfig) -> np.ndarray:
    if config.log1p == "none":
        return np.zeros(len(names), dtype=bool)
    minimum = values.min(axis=0)
    if config.log1p == "auto":
        return (minimum >= 0) & (np.abs(skewness(values)) > config.skew_threshold)
    unknown = [name for name in config.log1p if name not in names]
    if unknown:
        raise ConfigError(f"scale.log1p names unknown feature(s): {', '.join(unknown)}")
    mask = np.array([name in config.log1p for name in names])
    negative = [
        name for name, low in zip(names, minimum, strict=True) if name in config.log1p and low < 0
    ]
    if negative:
        raise ConfigError(
            f"scale.log1p: feature(s) {', '.join(negative)} have negative values; log1p needs >= 0"
        )
    return mask


def affine_parameters(values: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    d = values.shape[1]
    if method == "standard":
        center, scale = values.mean(axis=0), values.std(axis=0)
    elif method == "minmax":
        low, high = values.min(axis=0), values.max(axis=0)
        center, scale = low, high - low
    elif method == "minmax_sym":
        low, high = values.min(axis=0), values.max(axis=0)
        center, scale = (high + low) / 2.0, (high - low) / 2.0
    elif method == "robust":
        q25, median, q75 = np.percentile(values, [25, 50, 75], axis=0)
        center, scale = median, q75 - q25
    elif method == "maxabs":
        center, scale = np.zeros(d), np.abs(values).max(axis=0)
    else:
        center, scale = np.zeros(d), np.ones(d)
    # A constant column keeps scale 1 (as scikit-learn does) instead of dividing by zero.
    scale = np.where(scale > np.finfo(np.float64).eps * np.maximum(1.0, np.abs(center)), scale, 1.0)
    return center.astype(np.float64), scale.astype(np.float64)


def scale(values: np.ndarray, names: list[str], config: ScaleConfig) -> ScaleResult:
    log1p_mask = choose_log1p(values, names, config)
    transformed = values.astype(np.float64, copy=True)
    transformed[:, log1p_mask] = np.log1p(transformed[:, log1p_mask])
    d = values.shape[1]
    clip_low, clip_high = np.full(d, -np.inf), np.full(d, np.inf)
    if config.clip_quantiles is not None:
        clip_low, clip_high = np.quantile(transformed, config.clip_quantiles, axis=0)
        transformed = np.clip(transformed, clip_low, clip_high)
    center, scale_ = affine_parameters(transformed, config.method)
    scaled = (transformed - center) / scale_
    report = {
        "method": config.method,
        "log1p_columns": [name for name, flag in zip(names, log1p_mask, strict=True) if flag],
        "clip_quantiles": list(config.clip_quantiles) if config.clip_quantiles else None,
    }
    return ScaleResult(
        values=scaled,
        log1p_mask=log1p_mask,
        clip_low=np.asarray(clip_low, dtype=np.float64),
        clip_high=np.asarray(clip_high, dtype=np.float64),
        center=center,
        scale=scale_,
        report=report,
    )
