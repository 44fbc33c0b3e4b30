"""Plots logged with every training run (PNG; matplotlib's Agg backend, no display)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tasks.cluster import SweepResult


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def metric_by_k(result: SweepResult, metric: str, chosen_k: int, path: Path, title: str) -> Path:
    plt = _pyplot()
    ks = result.k_values
    values = result.metric_table()[metric]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ks, values, marker="o")
    ax.axvline(chosen_k, color="tab:red", linestyle="--", label=f"chosen k={chosen_k}")
    ax.set_xlabel("k (number of segments)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title)
    ax.set_xticks(ks)
    ax.legend()
    return _save(fig, path)


def pca_variance(ratios: np.ndarray, kept: int, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    positions = np.arange(1, len(ratios) + 1)
    ax.bar(positions, ratios, color="tab:blue", label="per component")
    ax.plot(positions, np.cumsum(ratios), color="tab:orange", marker="o", label="cumulative")
    if kept:
        ax.axvline(kept + 0.5, color="tab:red", linestyle="--", label=f"kept {kept}")
    ax.set_xlabel("principal component")
    ax.set_ylabel("explained variance ratio")
    ax.set_ylim(0, 1.05)
    ax.set_title("PCA explained variance")
    ax.legend()
    return _save(fig, path)


def heatmap(
    frame: pd.DataFrame,
    path: Path,
    title: str,
    annotate: pd.DataFrame | None = None,
    color_label: str = "",
) -> Path:
    """Rows x columns heatmap; colours from `frame`, optional text from `annotate`."""
    plt = _pyplot()
    rows, columns = frame.shape
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * columns + 2), max(3, 0.45 * rows + 1.5)))
    values = frame.to_numpy(dtype=float)
    limit = np.nanmax(np.abs(values)) or 1.0
    image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(columns), [str(c) for c in frame.columns], rotation=60, ha="right")
    ax.set_yticks(range(rows), [str(i) for i in frame.index])
    if annotate is not None and rows * columns <= 400:
        for i in range(rows):
            for j in range(columns):
                ax.text(j, i, f"{annotate.iat[i, j]:.3g}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label=color_label)
    ax.set_title(title)
    return _save(fig, path)


def cluster_sizes(sizes: dict[int, int], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    segments = sorted(sizes)
    ax.bar([str(s) for s in segments], [sizes[s] for s in segments], color="tab:green")
    ax.set_xlabel("segment")
    ax.set_ylabel("rows")
    ax.set_title("Segment sizes")
    return _save(fig, path)


def membership_probability(probabilities: np.ndarray, threshold: float, path: Path) -> Path:
    """Histogram of each row's posterior probability of its own segment (a mixture's), with
    the share below ``threshold`` marked."""
    plt = _pyplot()
    probabilities = np.asarray(probabilities, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(probabilities, bins=np.linspace(0.0, 1.0, 21), color="tab:purple")
    below = float((probabilities < threshold).mean()) if len(probabilities) else 0.0
    ax.axvline(
        threshold, color="tab:red", linestyle="--", label=f"{below:.0%} of rows below {threshold}"
    )
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("membership probability of the assigned segment")
    ax.set_ylabel("rows")
    ax.set_title("How sure the assignments are")
    ax.legend()
    return _save(fig, path)
