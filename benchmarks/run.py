"""Benchmark tasks.compute against scikit-learn in the same process.

    uv run python -m benchmarks.run            # full sizes (~10 min on 2 cores)
    uv run python -m benchmarks.run --quick    # small smoke run

Writes benchmarks/results/bench[-quick].md and .json: wall times, speed-up ratio,
quality ratio, goal, thread counts (threadpoolctl + numba) and the machine.
Fairness: same data, same n_init / max_iter / tol, same seeds (our k-means++ replays
scikit-learn's random draws), total wall time of a fit including seeding, best of
REPEAT runs for both sides (the sweep's sides in rounds, one fit of each per round, so
that a busy spell of the shared machine does not fall on one side only); each of our
kernels is compiled (cache=True) by a warm-up call on tiny data before timing. Both libraries run in one process: our kernels' thread
count and the other thread pools (scikit-learn's OpenMP, OpenBLAS) are listed in the
report.

scikit-learn-intelex (oneDAL; the ``bench`` dependency group, installed by ``make bench``)
is a second reference for the k-means sweep, timed the same way; the report says whether
oneDAL ran (its log, not a silent fall-back to scikit-learn) or that it is not installed.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import logging
import os
import platform
import time
from pathlib import Path

import numba
import numpy as np
import sklearn
import sklearn.cluster as skc
from sklearn import metrics as skm
from sklearn.impute import KNNImputer as SkKNNImputer
from threadpoolctl import threadpool_info

from flows.runtime import keep_freed_memory
from tasks.compute import (
    BoundedLloyd,
    KMeans,
    KMeansSweep,
    KNNImputer,
    MiniBatchKMeans,
    lloyd_pass,
    silhouette_score,
)

RESULTS = Path(__file__).parent / "results"
#: each timing is the best of REPEAT runs (both sides), to damp noise from other processes
REPEAT = 3


#: KMeans sweep goals: against scikit-learn, and against scikit-learn-intelex at equal
#: inertia (sum over k within 1.01x of intelex's)
SWEEP_GOAL_SKLEARN = 5
SWEEP_GOAL_INTELEX = 2


class _OneDALLog(logging.Handler):
    """Collects sklearnex's dispatch log: "running accelerated version on CPU" when
    oneDAL fitted, "fallback to original Scikit-learn" when it handed over."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@functools.cache
def _intelex_kmeans():
    """sklearnex's KMeans class and a handler on its dispatch log, or (None, None) when the
    ``bench`` group is not installed (no import at module load: the import patches
    nothing, but it loads oneDAL, which costs a second)."""
    if importlib.util.find_spec("sklearnex") is None:
        return None, None
    from sklearnex.cluster import KMeans as IntelexKMeans

    log = _OneDALLog()
    logger = logging.getLogger("sklearnex")
    logger.addHandler(log)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # one line per fit otherwise: collected, not printed
    return IntelexKMeans, log


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _blobs(n, d, centers, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    C = rng.normal(scale=6.0, size=(centers, d))
    lab = rng.integers(0, centers, size=n)
    X = C[lab] + rng.normal(scale=2.0, size=(n, d))
    return X.astype(dtype), lab


def _time(fn, repeat=1, prepare=None):
    """Best wall time of ``repeat`` calls of ``fn`` and its last result; with ``prepare``,
    each call gets a fresh ``prepare()`` made before the clock starts."""
    best = np.inf
    out = None
    for _ in range(repeat):
        args = () if prepare is None else (prepare(),)
        t = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t)
    return best, out


def _stream_floor(X):
    """Time to stream X once (best of 5): numpy's contiguous sum."""
    return _time(lambda: float(X.sum()), repeat=5)[0]


def warmup():
    X, _ = _blobs(3000, 5, 3, 0)
    KMeansSweep(range(2, 4), random_state=0).fit(X)
    KMeans(3, random_state=0).fit(X.astype(np.float64))
    MiniBatchKMeans(3, random_state=0).fit(X)
    silhouette_score(X[:300].astype(np.float64), np.arange(300) % 3)
    Xn = X[:300].astype(np.float64)
    Xn[::7, 1] = np.nan
    KNNImputer().fit_transform(Xn)
    IntelexKMeans, _ = _intelex_kmeans()
    if IntelexKMeans is not None:  # oneDAL's first call loads and initialises the library
        IntelexKMeans(3, random_state=0, n_init=1).fit(X)


def _against_sklearn(name, t_ours, t_sk, goal_speedup, quality, quality_met, **extra):
    """A result row timed against scikit-learn: met when the speed-up reaches its goal
    and the quality is good enough."""
    row = dict(
        name=name,
        ours_s=t_ours,
        sklearn_s=t_sk,
        speedup=t_sk / t_ours,
        goal=f"speedup >= {goal_speedup}",
        quality=quality,
        met=bool(t_sk / t_ours >= goal_speedup and quality_met),
    )
    if extra:
        row["extra"] = extra
    return row


def _sweep_rounds(X, ks, kw, references):
    """Best-of-REPEAT times of our sweep and of fitting each k with every reference class
    (``references``: name -> estimator class), timed in rounds: each round fits every
    side once, so that a busy spell of the shared machine falls on all sides alike, not
    on whichever ran through it. Returns our best time and last sweep, and per
    reference: (summed best time over k, summed inertia, summed iterations)."""
    best_ours, sweep = np.inf, None
    best = {name: dict.fromkeys(ks, np.inf) for name in references}
    last = {name: {} for name in references}
    for _ in range(REPEAT):
        t, sweep = _time(lambda: KMeansSweep(ks, random_state=0, **kw).fit(X))
        best_ours = min(best_ours, t)
        for name, cls in references.items():
            for k in ks:
                t, m = _time(lambda cls=cls, k=k: cls(k, random_state=0, **kw).fit(X))
                best[name][k] = min(best[name][k], t)
                last[name][k] = m
    totals = {
        name: (
            sum(best[name].values()),
            sum(m.inertia_ for m in last[name].values()),
            sum(m.n_iter_ for m in last[name].values()),
        )
        for name in references
    }
    return best_ours, sweep, totals


def _intelex_columns(intelex, log, t_ours, our_inertia) -> dict:
    """The intelex columns of the sweep row: time, our speed-up, inertia ratio, and whether
    oneDAL itself ran every fit (``intelex``: its totals from :func:`_sweep_rounds`)."""
    t_x, x_inertia, x_iters = intelex
    fallbacks = [m for m in log.messages if "fallback" in m.lower()]
    accelerated = sum("accelerated" in m.lower() for m in log.messages)
    ratio = our_inertia / x_inertia
    return dict(
        intelex_s=t_x,
        speedup_intelex=t_x / t_ours,
        intelex_quality=f"sum inertia ratio vs intelex {ratio:.4f} (goal <= 1.01)",
        intelex_met=bool(t_x / t_ours >= SWEEP_GOAL_INTELEX and ratio <= 1.01 and not fallbacks),
        intelex_note=(
            f"oneDAL ran {accelerated} fits"
            if not fallbacks
            else f"{len(fallbacks)} fits fell back to scikit-learn: {fallbacks[0]}"
        ),
        intelex_total_iters=int(x_iters),
    )


def bench_sweep(n, d, ks, rows):
    X, _ = _blobs(n, d, 8, 1)
    kw = dict(n_init=1, max_iter=100, tol=1e-4)
    IntelexKMeans, log = _intelex_kmeans()
    references = {"sklearn": skc.KMeans}
    if IntelexKMeans is not None:
        references["intelex"] = IntelexKMeans
        log.messages.clear()
    t_ours, sweep, totals = _sweep_rounds(X, ks, kw, references)
    t_sk, sk_inertia, sk_iters = totals["sklearn"]
    our_inertia = sum(m.inertia_ for m in sweep.models_.values())
    row = _against_sklearn(
        f"KMeansSweep k={ks[0]}..{ks[-1]}, {n}x{d} float32, n_init=1, max_iter=100",
        t_ours,
        t_sk,
        SWEEP_GOAL_SKLEARN,
        f"sum inertia ratio {our_inertia / sk_inertia:.4f} (goal <= 1.01)",
        our_inertia <= 1.01 * sk_inertia,
        our_iters={int(k): int(m.n_iter_) for k, m in sweep.models_.items()},
        sk_total_iters=int(sk_iters),
    )
    if IntelexKMeans is None:
        intelex = dict(intelex_note="scikit-learn-intelex not installed (make bench installs it)")
    else:
        intelex = _intelex_columns(totals["intelex"], log, t_ours, our_inertia)
    row.update(intelex)
    if "intelex_s" in intelex:
        row["goal"] += f"; vs intelex >= {SWEEP_GOAL_INTELEX}"
        row["quality"] += f"; {intelex['intelex_quality']}"
        row["met"] = bool(row["met"] and intelex["intelex_met"])
    rows.append(row)
    _bench_lloyd_passes(X, ks, rows)


def _lloyd_pass_times(X, sw, kset):
    """Best-of-5 times of a plain pass, a fit's first pass and a later bounded pass of the
    clusterings ``kset`` (k-means++ seeds, one real centroid update before the last)."""
    centers = [KMeans(k, random_state=0, max_iter=1).fit(X).cluster_centers_ for k in kset]
    C = np.concatenate(centers)
    offsets = np.array([0, *np.cumsum(kset)], dtype=np.int64)
    active = np.arange(len(kset), dtype=np.int64)
    fresh = BoundedLloyd(X, sw, None, kset)
    t_plain = _time(lambda: lloyd_pass(X, sw, C, offsets), repeat=5)[0]
    t_first = _time(lambda s: s.run_pass(centers, active), 5, fresh.copy)[0]
    state = fresh.copy()
    state.run_pass(centers, active)
    moved = (state.S / state.W[:, None]).astype(X.dtype)
    state.shift[:] = np.sqrt(((moved - C.astype(np.float64)) ** 2).sum(axis=1))
    moved = np.split(moved, offsets[1:-1])
    t_second = _time(lambda s: s.run_pass(moved, active, dense=[]), 5, state.copy)[0]
    return t_plain, t_first, t_second


def _bench_lloyd_passes(X, ks, rows):
    """Time per Lloyd iteration against the stream floor (time to read X once).

    The plain fused pass (:func:`tasks.compute.lloyd_pass`: assignment and centroid sums,
    what the Dask engine runs per partition, and a fit's first pass) reads X once and
    computes every distance. The pass that sets the bounds (a fit's second) computes
    every distance too (BLAS, a :class:`BoundedLloyd` pass with every clustering dense);
    later passes use the distance bounds and recompute only the rows the bounds cannot
    settle. Both are timed on k-means++ seeds of X: the first
    pass, then the second pass after one real centroid update (on a copy of the state
    for each repeat, since a pass updates it in place).
    """
    n, d = X.shape
    floor = _stream_floor(X)
    sw = np.ones(n, dtype=X.dtype)
    for label, kset in (("k=8", [8]), (f"k={ks[0]}..{ks[-1]} stacked", list(ks))):
        t_plain, t_first, t_second = _lloyd_pass_times(X, sw, kset)
        K = sum(kset)
        for name, t, goal in (
            ("plain fused pass (assign + sums, no bounds)", t_plain, label == "k=8"),
            ("pass that sets the bounds, every distance + bounds", t_first, label == "k=8"),
            ("later pass, with distance bounds", t_second, label == "k=8"),
        ):
            rows.append(
                dict(
                    name=f"Lloyd iteration {label} ({K} centroids), {name}, {n}x{d} float32",
                    ours_s=t,
                    sklearn_s=None,
                    speedup=None,
                    goal="<= 2x stream floor" if goal else "(reported)",
                    quality=f"stream floor {floor * 1e3:.1f} ms -> {t / floor:.2f}x floor",
                    met=bool(t <= 2 * floor) if goal else None,
                )
            )


def bench_knn(n, d, rows):
    rng = np.random.default_rng(2)
    X, _ = _blobs(n, d, 6, 2, dtype=np.float64)
    X[rng.random(X.shape) < 0.1] = np.nan
    t_ours, a = _time(lambda: KNNImputer(n_neighbors=5).fit_transform(X), repeat=REPEAT)
    t_sk, b = _time(lambda: SkKNNImputer(n_neighbors=5).fit_transform(X), repeat=REPEAT)
    diff = float(np.max(np.abs(a - b)))
    rows.append(
        _against_sklearn(
            f"KNNImputer k=5, {n}x{d}, 10% missing",
            t_ours,
            t_sk,
            20,
            f"max abs diff {diff:.1e}",
            diff < 1e-6,
        )
    )


def bench_silhouette(n, d, rows):
    X, lab = _blobs(n, d, 8, 3, dtype=np.float64)
    t_ours, a = _time(lambda: silhouette_score(X, lab), repeat=REPEAT)
    t_sk, b = _time(lambda: skm.silhouette_score(X, lab), repeat=REPEAT)
    rows.append(
        _against_sklearn(
            f"silhouette_score exact, {n}x{d}",
            t_ours,
            t_sk,
            10,
            f"abs diff {abs(a - b):.1e}",
            abs(a - b) < 1e-9,
        )
    )


def bench_minibatch(n, d, k, rows):
    X, _ = _blobs(n, d, 8, 4)
    for label, extra_kw in (
        ("default early stopping", {}),
        ("1 epoch, no early stopping", dict(max_iter=1, max_no_improvement=None)),
    ):
        kw = dict(batch_size=1024, random_state=0, n_init=1, **extra_kw)
        t_ours, a = _time(lambda kw=kw: MiniBatchKMeans(k, **kw).fit(X), repeat=REPEAT)
        t_sk, b = _time(lambda kw=kw: skc.MiniBatchKMeans(k, **kw).fit(X), repeat=REPEAT)
        ratio = a.inertia_ / b.inertia_
        rows.append(
            _against_sklearn(
                f"MiniBatchKMeans k={k}, {n}x{d} float32, batch 1024, {label} "
                f"(steps: ours {a.n_steps_}, sklearn {b.n_steps_})",
                t_ours,
                t_sk,
                10,
                f"inertia ratio {ratio:.4f} (goal <= 1.02)",
                ratio <= 1.02,
                our_steps=int(a.n_steps_),
                sk_steps=int(b.n_steps_),
            )
        )


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _fmt(v):
    return "-" if v is None else f"{v:.3f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    args = p.parse_args(argv)
    q = args.quick
    # Every side runs in this process as popseg's flow commands do (train, run, monitor):
    # freed memory stays in the heap for the next arrays. oneDAL brings a caching allocator
    # of its own; without this our kernels and scikit-learn pay fresh page faults for each
    # large array (5 ms per MB on the 2-core VM the results were measured on).
    kept = keep_freed_memory()
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    warmup()
    rows: list[dict] = []
    bench_sweep(50_000 if q else 1_000_000, 20, list(range(2, 13)), rows)
    print(f"sweep done ({time.perf_counter() - t0:.0f}s)", flush=True)
    bench_knn(2_000 if q else 20_000, 20, rows)
    print(f"knn done ({time.perf_counter() - t0:.0f}s)", flush=True)
    bench_silhouette(2_000 if q else 20_000, 20, rows)
    print(f"silhouette done ({time.perf_counter() - t0:.0f}s)", flush=True)
    bench_minibatch(50_000 if q else 1_000_000, 20, 8, rows)
    env = dict(
        cpu=_cpu_model(),
        cores=os.cpu_count(),
        numba_threads=numba.get_num_threads(),
        threadpools=[
            {k: i.get(k) for k in ("user_api", "internal_api", "prefix", "num_threads", "version")}
            for i in threadpool_info()
        ],
        numpy=np.__version__,
        sklearn=sklearn.__version__,
        numba=numba.__version__,
        sklearnex=_version("scikit-learn-intelex"),
        quick=q,
        total_s=time.perf_counter() - t0,
        loadavg_start=load_start,
        loadavg_end=os.getloadavg(),
        allocator="freed memory kept in the heap" if kept else "glibc default",
    )
    lines = [
        f"# tasks.compute vs scikit-learn {sklearn.__version__}{' (quick)' if q else ''}",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores. numba {numba.__version__} "
        f"(kernels on {env['numba_threads']} threads).",
        "Thread pools: "
        + "; ".join(
            f"{t['internal_api']}:{t['prefix']}={t['num_threads']}" for t in env["threadpools"]
        ),
        f"Allocator (every side): {env['allocator']}, as popseg's flow commands run "
        "(flows.runtime.keep_freed_memory).",
        "",
        "| benchmark | ours (s) | scikit-learn (s) | speed-up | intelex (s) | vs intelex "
        "| goal | quality | met |",
        "|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        sp = "-" if r["speedup"] is None else f"{r['speedup']:.1f}x"
        sp_x = f"{r['speedup_intelex']:.1f}x" if "speedup_intelex" in r else "-"
        lines.append(
            f"| {r['name']} | {_fmt(r['ours_s'])} | {_fmt(r['sklearn_s'])} | {sp} "
            f"| {_fmt(r.get('intelex_s'))} | {sp_x} | {r['goal']} | {r['quality']} | {met} |"
        )
    lines += [
        "",
        "intelex: scikit-learn-intelex "
        + (_version("scikit-learn-intelex") or "not installed")
        + " (oneDAL), the sweep only (it does not accelerate the other estimators). "
        + "; ".join(r["intelex_note"] for r in rows if "intelex_note" in r)
        + ".",
        "",
        f"Total benchmark time: {env['total_s']:.0f} s. Load average (1/5/15 min) at start "
        f"{'/'.join(f'{v:.2f}' for v in load_start)}, at end "
        f"{'/'.join(f'{v:.2f}' for v in env['loadavg_end'])} (other processes on the "
        "machine inflate both sides' times).",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "bench-quick" if q else "bench"
    (RESULTS / f"{stem}.md").write_text(text + "\n")
    (RESULTS / f"{stem}.json").write_text(json.dumps(dict(env=env, rows=rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
