"""Fill numba's cache with the kernels the default pipeline runs, ahead of first use.

    python -m tasks.compute.warm            # e.g. in a container image's build step

The kernels compile lazily (``cache=True``) on their first call with a given set of
argument types; a fresh install pays that compilation in its first ``popseg`` command
(`benchmarks/compile_time.py`). This module makes those first calls on tiny synthetic
data with the argument types the pipeline uses (float64 rows, as ``tasks.cluster`` and
``tasks.impute`` pass them), so that the compiled code lands in numba's cache
(``NUMBA_CACHE_DIR``, else ``__pycache__`` beside the kernels) before the pipeline needs
it: worth it where compile time can be paid ahead (an image build, a worker's start).
`make setup` does not start it: on 2 cores, running it beside the first `make run` made
that run slower (benchmarks/fresh_clone.py). It is pure: arrays in, nothing out but the cache files; a failure costs nothing (the
kernels then compile on first use, as before).

Covered: the k-means sweep's plain passes (< 50,000 rows) and bounded passes (larger
data), k-means fit/predict (bootstrap refits, the chain's prediction), the quality
metrics (silhouette exact and sampled, Calinski-Harabasz, Davies-Bouldin, Dunn) and KNN imputation.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout


def _blobs(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=5.0, size=(4, d))
    return centers[rng.integers(0, 4, size=n)] + rng.normal(size=(n, d))


def warm_kernels() -> None:
    """Call every kernel of the default pipeline once, float64, on tiny data (the sizes
    only pick the code paths: plain and bounded Lloyd passes, sampled silhouette)."""
    from tasks.compute import (
        KMeans,
        KMeansSweep,
        KNNImputer,
        calinski_harabasz_score,
        davies_bouldin_score,
        dunn_index,
        silhouette_score,
    )
    from tasks.compute.kmeans import _BOUNDED_MIN_ROWS
    from tasks.compute.metrics import _SYM_MIN_ROWS

    small = _blobs(400, 3, 0)
    sweep = KMeansSweep(range(2, 5), n_init=2, random_state=0).fit(small)
    labels = sweep.models_[4].labels_
    KMeans(4, n_init=2, random_state=1).fit(small[::2]).predict(small)
    silhouette_score(small, labels)
    silhouette_score(small, labels, sample_size=100, random_state=0)
    calinski_harabasz_score(small, labels)
    davies_bouldin_score(small, labels)
    dunn_index(small, labels)
    # the bounded passes start at _BOUNDED_MIN_ROWS rows, the symmetric silhouette sums at
    # _SYM_MIN_ROWS (the sampled silhouette of larger data); two features keep them cheap
    large = _blobs(_BOUNDED_MIN_ROWS, 2, 1)
    large_labels = KMeansSweep(range(2, 4), n_init=1, max_iter=5, random_state=0).fit(large)
    silhouette_score(large, large_labels.models_[3].labels_, sample_size=_SYM_MIN_ROWS)
    missing = small.copy()
    missing[::7, 1] = np.nan
    KNNImputer(n_neighbors=5).fit(missing).transform(missing)


def _lock_path() -> Path:
    """A lock file beside the cache the kernels write to (numba's ``NUMBA_CACHE_DIR``, else
    the ``__pycache__`` next to the kernel modules)."""
    import numba

    folder = Path(numba.config.CACHE_DIR or Path(__file__).parent / "__pycache__")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "popseg-warm.lock"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    # `make lint` then `make test` each start one: a second warm-up while the first is
    # compiling would compile the same kernels again on the other core, for nothing
    lock = FileLock(_lock_path())
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print("numba kernels: another warm-up is filling the same cache")
        return
    try:
        start = time.perf_counter()
        warm_kernels()
        print(f"numba kernels cached in {time.perf_counter() - start:.1f} s")
    finally:
        lock.release()


if __name__ == "__main__":
    main()
