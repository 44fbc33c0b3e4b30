"""Benchmark tasks.compute.gmm (numpy EM) against scikit-learn's GaussianMixture.

    uv run python -m benchmarks.gmm            # full sizes (a few minutes on 2 cores)
    uv run python -m benchmarks.gmm --quick    # small smoke run

Two rows per case (data family x size x covariance), each over several seeds:

- ``EM``: both from the same parameters (a k-means start's weights, means and precisions,
  passed to scikit-learn as ``weights_init``/``means_init``/``precisions_init``, its
  ``init_params="random_from_data"`` so that its own start costs next to nothing): the same
  iterations on both sides, so the ratio is the cost of an EM iteration. The mean
  log-likelihoods are compared too (relative difference).
- ``fit``: the whole fit with ``n_init=1`` from each library's own k-means start (iteration
  counts may differ; both are listed).

Times are CPU seconds of this process (both sides run here, one after the other, best of
REPEAT) and wall seconds; ratio = scikit-learn / ours (> 1: ours is faster). Writes
benchmarks/results/gmm[-quick].md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from sklearn.mixture import GaussianMixture

from tasks.compute.gmm import (
    fit_from_parameters,
    fit_gaussian_mixture,
    kmeans_start_labels,
    parameters_from_labels,
)

RESULTS = Path(__file__).parent / "results"
REPEAT = 3
TOL = 1e-3
MAX_ITER = 100


def _blobs(n: int, d: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(k, d))
    labels = rng.integers(0, k, size=n)
    return centers[labels] + rng.normal(size=(n, d))


def _anisotropic(n: int, d: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000)
    return _blobs(n, d, k, seed) @ rng.normal(scale=0.7, size=(d, d))


def _uneven(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """One big group and k - 1 small, tight ones (10% of the rows between them)."""
    rng = np.random.default_rng(seed)
    small = n // 10
    big = rng.normal(size=(n - small, d))
    centers = rng.normal(scale=6.0, size=(k - 1, d))
    labels = rng.integers(0, k - 1, size=small)
    return np.vstack([big, centers[labels] + 0.3 * rng.normal(size=(small, d))])


FAMILIES: dict[str, Callable[[int, int, int, int], np.ndarray]] = {
    "blobs": _blobs,
    "anisotropic": _anisotropic,
    "uneven": _uneven,
}


def _precisions(factors: np.ndarray, covariance: str) -> np.ndarray:
    if covariance == "full":
        return np.einsum("kij,klj->kil", factors, factors)
    return factors**2


def _timed(function: Callable[[], Any]) -> tuple[float, float, Any]:
    """(best CPU seconds, best wall seconds, the last result) over REPEAT calls."""
    cpu, wall, result = [], [], None
    for _ in range(REPEAT):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        result = function()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    return min(cpu), min(wall), result


def em_row(values: np.ndarray, k: int, covariance: str, seed: int) -> dict[str, Any]:
    weights, means, factors = parameters_from_labels(
        values, kmeans_start_labels(values, k, seed), k, covariance
    )

    def ours() -> Any:
        return fit_from_parameters(
            values, weights, means, factors, covariance=covariance, tol=TOL, max_iter=MAX_ITER
        )

    def reference() -> Any:
        return GaussianMixture(
            k,
            covariance_type=covariance,
            tol=TOL,
            max_iter=MAX_ITER,
            init_params="random_from_data",
            weights_init=weights,
            means_init=means,
            precisions_init=_precisions(factors, covariance),
            random_state=seed,
        ).fit(values)

    return _compare(values, ours, reference)


def fit_row(values: np.ndarray, k: int, covariance: str, seed: int) -> dict[str, Any]:
    def ours() -> Any:
        return fit_gaussian_mixture(
            values, k, covariance=covariance, tol=TOL, max_iter=MAX_ITER, random_state=seed
        )

    def reference() -> Any:
        return GaussianMixture(
            k, covariance_type=covariance, tol=TOL, max_iter=MAX_ITER, random_state=seed
        ).fit(values)

    return _compare(values, ours, reference)


def _compare(
    values: np.ndarray, ours: Callable[[], Any], reference: Callable[[], Any]
) -> dict[str, Any]:
    """Both fits timed one after the other, with their iterations and the relative
    difference of their mean log-likelihoods on ``values``."""
    our_cpu, our_wall, fit = _timed(ours)
    sk_cpu, sk_wall, sk = _timed(reference)
    sk_ll = sk.score(values)
    return {
        "our_cpu": our_cpu,
        "sk_cpu": sk_cpu,
        "our_wall": our_wall,
        "sk_wall": sk_wall,
        "our_iter": fit.n_iter,
        "sk_iter": int(sk.n_iter_),
        "ll_rel_diff": abs(fit.mean_log_likelihood - sk_ll) / abs(sk_ll),
    }


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def run(quick: bool) -> tuple[list[dict[str, Any]], str]:
    sizes = [(2_000, 4, 4)] if quick else [(20_000, 5, 6), (100_000, 10, 8)]
    seeds = [0, 1] if quick else [0, 1, 2]
    # A warm-up of both sides (numba's k-means start compiled or loaded from its cache).
    warm = _blobs(200, 3, 3, 0)
    fit_gaussian_mixture(warm, 3)
    GaussianMixture(3).fit(warm)
    rows = []
    for n, d, k in sizes:
        for family, make in FAMILIES.items():
            for covariance in ("full", "diag"):
                for kind, measure in (("EM", em_row), ("fit", fit_row)):
                    results = [measure(make(n, d, k, seed), k, covariance, seed) for seed in seeds]
                    rows.append(
                        {
                            "rows": n,
                            "features": d,
                            "k": k,
                            "family": family,
                            "covariance": covariance,
                            "kind": kind,
                            "seeds": seeds,
                            "results": results,
                            "cpu_ratio": [r["sk_cpu"] / r["our_cpu"] for r in results],
                            "wall_ratio": [r["sk_wall"] / r["our_wall"] for r in results],
                        }
                    )
                    print(_line(rows[-1]), flush=True)
    return rows, _markdown(rows, quick)


_HEADER = (
    "| rows x features, k | family | covariance | what | ours CPU s | sklearn CPU s "
    "| ratio CPU (min-max) | ratio wall (min-max) | iterations ours/sklearn | max ll rel diff |"
)


def _line(row: dict[str, Any]) -> str:
    results = row["results"]
    iterations = "/".join(",".join(str(r[key]) for r in results) for key in ("our_iter", "sk_iter"))
    return (
        f"| {row['rows']} x {row['features']}, {row['k']} | {row['family']} "
        f"| {row['covariance']} | {row['kind']} "
        f"| {statistics.median(r['our_cpu'] for r in results):.3f} "
        f"| {statistics.median(r['sk_cpu'] for r in results):.3f} "
        f"| {_spread(row['cpu_ratio'])} | {_spread(row['wall_ratio'])} | {iterations} "
        f"| {max(r['ll_rel_diff'] for r in results):.1e} |"
    )


def _markdown(rows: list[dict[str, Any]], quick: bool) -> str:
    load = os.getloadavg()
    lines = [
        f"# Gaussian mixture: tasks.compute.gmm vs scikit-learn {sklearn.__version__}"
        + (" (quick)" if quick else ""),
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs; numpy {np.__version__}; "
        f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}. "
        f"Best of {REPEAT} per seed; ratio = scikit-learn / ours, median over seeds "
        "(min-max). EM: from the same start; fit: n_init=1 from each library's own k-means.",
        "",
        _HEADER,
        "|" + "---|" * 10,
        *[_line(row) for row in rows],
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, two seeds")
    args = parser.parse_args()
    rows, markdown = run(args.quick)
    name = "gmm-quick" if args.quick else "gmm"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(markdown)
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
