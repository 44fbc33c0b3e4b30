"""Reduce: PCA by component count, by explained-variance fraction (default >= 80%, keeping at
least ``reduce.min_components``, default 2, so 2-D data stays 2-D), `auto` (PCA only past
``reduce.auto_min_features``, default 100 features) or none. Records explained variance and
the component makeup (loadings) in the original feature names."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tasks.config import ReduceConfig

logger = logging.getLogger(__name__)

AUTO_VARIANCE_FRACTION = 0.8


@dataclass(frozen=True)
class ReduceResult:
    values: np.ndarray  # (n, p)
    mean: np.ndarray  # (d,)
    components: np.ndarray  # (p, d)
    explained_variance_ratio: np.ndarray  # (p,) of the kept components
    full_explained_variance_ratio: np.ndarray  # every component, for the scree plot
    applied: bool
    report: dict[str, Any] = field(default_factory=dict)

    def loadings(self, feature_names: list[str]) -> pd.DataFrame:
        """Component makeup: one row per component, one column per original feature."""
        index = [f"PC{i + 1}" for i in range(self.components.shape[0])]
        return pd.DataFrame(self.components, index=index, columns=feature_names)


def _target(config: ReduceConfig, n_features: int) -> int | float | None:
    if config.n_components == "none":
        return None
    if config.n_components == "auto":
        return AUTO_VARIANCE_FRACTION if n_features > config.auto_min_features else None
    return config.n_components


def reduce(values: np.ndarray, names: list[str], config: ReduceConfig) -> ReduceResult:
    from sklearn.decomposition import PCA

    n, d = values.shape
    max_components = min(n, d)
    # Full PCA always runs (cheap at d x d) so the scree plot shows every component.
    solver = "covariance_eigh" if n >= 4 * d else "full"
    pca = PCA(n_components=max_components, svd_solver=solver).fit(values)
    return reduce_from_pca(
        values, pca.mean_, pca.components_, pca.explained_variance_ratio_, n, config
    )


def pca_from_covariance(covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(components (d, d), explained variance ratios (d,)) from a covariance matrix, as
    scikit-learn's ``PCA(svd_solver="covariance_eigh")`` derives them from the data's: the
    eigenvectors by decreasing eigenvalue, negative eigenvalues set to 0, signs flipped so
    each component's largest-magnitude loading is positive. For data summed chunk by chunk
    (the covariance reduced across partitions); in memory, `reduce` fits scikit-learn's PCA."""
    from sklearn.utils.extmath import svd_flip

    covariance = np.asarray(covariance, dtype=np.float64)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    eigenvalues = eigenvalues[::-1].copy()
    eigenvectors = eigenvectors[:, ::-1]
    eigenvalues[eigenvalues < 0.0] = 0.0
    _, components = svd_flip(None, np.ascontiguousarray(eigenvectors.T), u_based_decision=False)
    total = eigenvalues.sum()
    ratios = eigenvalues / total if total > 0 else np.full_like(eigenvalues, np.nan)
    return components, ratios


def reduce_from_pca(
    values: np.ndarray,
    mean: np.ndarray,
    all_components: np.ndarray,
    ratios: np.ndarray,
    n_rows: int,
    config: ReduceConfig,
) -> ReduceResult:
    """Keep the components ``reduce.n_components`` asks for out of a fitted full PCA (every
    component, by decreasing variance) of ``n_rows`` rows with column means ``mean``, and
    project ``values`` (the rows kept in memory: all of them, or a sample)."""
    d = values.shape[1]
    target = _target(config, d)
    max_components = min(n_rows, d)
    if target is None:
        identity = np.eye(d)
        return ReduceResult(
            values=values - mean,
            mean=mean,
            components=identity,
            explained_variance_ratio=np.full(d, np.nan),
            full_explained_variance_ratio=ratios,
            applied=False,
            report={"applied": False, "n_components": d, "reason": _skip_reason(config, d)},
        )
    if isinstance(target, float):
        by_variance = int(np.searchsorted(np.cumsum(ratios), target - 1e-12) + 1)
        # A floor: one component of 2-D data merges groups that differ along the other axis
        # (benchmarks/k_selection.py).
        keep = min(max(by_variance, config.min_components), max_components)
        reason = f"smallest number of components explaining >= {target:.0%} of variance"
        if keep > by_variance:
            reason += f", at least reduce.min_components={config.min_components}"
    else:
        keep = min(target, max_components)
        if keep < target:
            logger.warning("reduce.n_components=%d capped at %d (rows/features)", target, keep)
        reason = f"reduce.n_components={target}"
    components = all_components[:keep]
    reduced = (values - mean) @ components.T
    return ReduceResult(
        values=reduced,
        mean=mean,
        components=components,
        explained_variance_ratio=ratios[:keep],
        full_explained_variance_ratio=ratios,
        applied=True,
        report={
            "applied": True,
            "n_components": keep,
            "explained_variance": float(ratios[:keep].sum()),
            "reason": reason,
        },
    )


def _skip_reason(config: ReduceConfig, n_features: int) -> str:
    if config.n_components == "none":
        return "reduce.n_components=none"
    return f"auto: {n_features} features <= reduce.auto_min_features={config.auto_min_features}"
