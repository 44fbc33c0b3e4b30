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
    values: np.ndarray | None  # None once reduce has projected them (`tasks.prepare.prepare`)
    log1p_mask: np.ndarray
    clip_low: np.ndarray
    clip_high: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)


def skewness(values: np.ndarray) -> np.ndarray:
    """Sample skewness per column (Fisher-Pearson, biased, as scipy.stats.skew)."""
    # Column by column: temporaries of one column, not three of the whole table.
    second, third = np.empty(values.shape[1]), np.empty(values.shape[1])
    for j in range(values.shape[1]):
        centered = values[:, j] - values[:, j].mean()
        squared = centered * centered
        second[j], third[j] = squared.mean(), (squared * centered).mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        result = third / second**1.5
    return np.where(second > 0, result, 0.0)


def choose_log1p(values: np.ndarray, names: list[str], config: ScaleConfig) -> np.ndarray:
    if config.log1p == "none":
        return np.zeros(len(names), dtype=bool)
    skew = skewness(values) if config.log1p == "auto" else None
    return log1p_from_stats(values.min(axis=0), skew, names, config)


def log1p_from_stats(
    minimum: np.ndarray, skew: np.ndarray | None, names: list[str], config: ScaleConfig
) -> np.ndarray:
    """The log1p columns from per-column minimum and skewness (``skew`` only for ``auto``)."""
    if config.log1p == "none":
        return np.zeros(len(names), dtype=bool)
    if config.log1p == "auto":
        return (minimum >= 0) & (np.abs(skew) > config.skew_threshold)
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


#: The column statistics each scaling method needs (see `affine_from_stats`).
AFFINE_STATISTICS = {
    "standard": ("mean", "std"),
    "minmax": ("min", "max"),
    "minmax_sym": ("min", "max"),
    "robust": ("quartiles",),
    "maxabs": ("absmax",),
    "none": (),
}


def affine_parameters(values: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    statistics = {
        "mean": lambda: values.mean(axis=0),
        "std": lambda: values.std(axis=0),
        "min": lambda: values.min(axis=0),
        "max": lambda: values.max(axis=0),
        "quartiles": lambda: np.percentile(values, [25, 50, 75], axis=0),
        "absmax": lambda: np.abs(values).max(axis=0),
    }
    needed = {name: statistics[name]() for name in AFFINE_STATISTICS[method]}
    return affine_from_stats(method, values.shape[1], needed)


def affine_from_stats(
    method: str, d: int, stats: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """(center, scale) of a method from its column statistics (`AFFINE_STATISTICS`): mean and
    population std, min/max, the 25/50/75th percentiles (``quartiles``, shape (3, d)), or
    the largest absolute value."""
    if method == "standard":
        center, scale = stats["mean"], stats["std"]
    elif method == "minmax":
        low, high = stats["min"], stats["max"]
        center, scale = low, high - low
    elif method == "minmax_sym":
        low, high = stats["min"], stats["max"]
        center, scale = (high + low) / 2.0, (high - low) / 2.0
    elif method == "robust":
        q25, median, q75 = stats["quartiles"]
        center, scale = median, q75 - q25
    elif method == "maxabs":
        center, scale = np.zeros(d), stats["absmax"]
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
        np.clip(transformed, clip_low, clip_high, out=transformed)
    center, scale_ = affine_parameters(transformed, config.method)
    # In place on this function's own copy (no temporaries of the data's size).
    transformed -= center
    transformed /= scale_
    return scale_result(transformed, names, config, log1p_mask, clip_low, clip_high, center, scale_)


def scale_result(
    values: np.ndarray,
    names: list[str],
    config: ScaleConfig,
    log1p_mask: np.ndarray,
    clip_low: np.ndarray,
    clip_high: np.ndarray,
    center: np.ndarray,
    scale_: np.ndarray,
) -> ScaleResult:
    """The fitted scaling with its report; ``values`` are the scaled rows kept in memory."""
    report = {
        "method": config.method,
        "log1p_columns": [name for name, flag in zip(names, log1p_mask, strict=True) if flag],
        "clip_quantiles": list(config.clip_quantiles) if config.clip_quantiles else None,
    }
    return ScaleResult(
        values=values,
        log1p_mask=log1p_mask,
        clip_low=np.asarray(clip_low, dtype=np.float64),
        clip_high=np.asarray(clip_high, dtype=np.float64),
        center=center,
        scale=scale_,
        report=report,
    )
