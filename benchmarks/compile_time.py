"""First use after an install: the kernels' numba compilation, cold cache against warm.

    uv run python -m benchmarks.compile_time            # both workloads
    uv run python -m benchmarks.compile_time --quick    # the pipeline workload only

Each workload runs in a fresh process twice with the same, initially empty,
``NUMBA_CACHE_DIR``: the first run compiles every kernel it calls (what a fresh clone, a
CI run or a new worker container pays), the second loads them from the cache. The
difference is the compilation cost. A third run, on a third empty cache, first runs
``python -m tasks.compute.warm`` (for images and Dask workers that want the kernels compiled ahead of
their first job) and then the workload: what a first run still compiles after that warm-up (goal:
nothing). Wall time and the child's user+sys CPU time are both
reported (on a shared machine wall time is noisy; CPU time is not). The slowest
compilations of the cold run are listed (own time, excluding the functions they call).

Workloads:

* ``pipeline`` - the kernels the default pipeline runs on the bundled data: a k=2..12
  sweep with 10 inits (float64, as ``tasks.cluster`` passes it), a bootstrap refit and
  prediction, silhouette and Dunn.
* ``large`` - a k=2..12 sweep on 100k x 20 (the distance-bound passes), KNN imputation
  and silhouette on a sample.

Writes benchmarks/results/compile_time.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
WORKLOADS = ("pipeline", "large")
#: goal: a cold first run costs at most this many seconds more than a warm one
GOAL_S = 10.0


def _pipeline():
    import numpy as np

    from tasks.compute import KMeans, KMeansSweep, dunn_index, silhouette_score

    X = np.random.default_rng(0).normal(size=(400, 20))
    sweep = KMeansSweep(range(2, 13), n_init=10, random_state=0).fit(X)
    labels = sweep.models_[4].labels_
    KMeans(4, n_init=3, random_state=1).fit(X[::2]).predict(X)
    silhouette_score(X, labels)
    dunn_index(X, labels)


def _large():
    import numpy as np

    from tasks.compute import KMeansSweep, KNNImputer, silhouette_score

    rng = np.random.default_rng(0)
    centers = rng.normal(scale=6.0, size=(8, 20))
    X = centers[rng.integers(0, 8, size=100_000)] + rng.normal(size=(100_000, 20))
    sweep = KMeansSweep(range(2, 13), n_init=1, random_state=0).fit(X)
    silhouette_score(X, sweep.models_[8].labels_, sample_size=5000, random_state=0)
    Xn = X[:5000].copy()
    Xn[rng.random(Xn.shape) < 0.1] = np.nan
    KNNImputer(n_neighbors=5).fit_transform(Xn)


def _child(workload: str) -> None:
    """Run one workload; print its times and the slowest compilations as JSON."""
    from numba.core import event

    compiles: list[tuple[str, float]] = []
    stack: list[list[float]] = []

    class Listener(event.Listener):
        # own CPU time of each compilation: its time less that of the nested ones
        def on_start(self, ev):
            stack.append([time.thread_time(), 0.0])

        def on_end(self, ev):
            start, nested = stack.pop()
            spent = time.thread_time() - start
            if stack:
                stack[-1][1] += spent
            fn = ev.data["dispatcher"].py_func
            compiles.append((f"{fn.__module__}.{fn.__qualname__}", spent - nested))

    event.register("numba:compile", Listener())
    cpu0, wall0 = time.process_time(), time.perf_counter()
    {"pipeline": _pipeline, "large": _large}[workload]()
    own = {}
    for name, spent in compiles:
        own[name] = own.get(name, 0.0) + spent
    top = sorted(own.items(), key=lambda item: -item[1])[:8]
    print(
        json.dumps(
            dict(
                work_wall_s=time.perf_counter() - wall0,
                work_cpu_s=time.process_time() - cpu0,
                compiled=len(compiles),
                compile_cpu_s=sum(spent for _, spent in compiles),
                slowest=[[name, round(spent, 2)] for name, spent in top],
            )
        )
    )


#: Runs argv[2:] and writes its wait4 rusage to the file argv[1]. The measured command is
#: spawned from this small process, not from the benchmark's: on exec Linux carries the
#: spawning process's peak RSS into the new program's ru_maxrss, so a command spawned from a
#: parent that has loaded numpy and pandas would show at least the parent's peak.
_LAUNCHER = """
import json, os, sys
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump([os.waitstatus_to_exitcode(status), ru.ru_utime + ru.ru_stime, ru.ru_maxrss], f)
"""


def timed_run(
    cmd: list[str], env: dict | None = None, cwd=None, timeout: float | None = None
) -> dict:
    """Run ``cmd`` in a fresh process; its exit code, output and what it cost.

    wall_s: wall seconds; cpu_s: user + sys seconds of the process and the children it
    waited for; max_rss_mb: the peak resident set of the process or of any one of those
    children (``ru_maxrss`` from ``wait4`` for this command alone, unlike
    ``RUSAGE_CHILDREN``, which keeps the peak of every child ever waited for). A command
    killed at ``timeout`` gets returncode -9 and no CPU/RSS figures."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryDirectory() as tmp,
    ):
        usage = Path(tmp) / "usage.json"
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(usage), *cmd],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        rc, cpu, rss = (
            json.loads(usage.read_text()) if usage.exists() else (proc.returncode, None, None)
        )
        return dict(
            returncode=rc,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            wall_s=wall,
            cpu_s=cpu,
            max_rss_mb=None if rss is None else rss / 1024,
        )


def _run_child(workload: str, cache_dir: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    run = timed_run([sys.executable, "-m", "benchmarks.compile_time", "--child", workload], env)
    if run["returncode"] != 0:
        raise RuntimeError(f"{workload} child exited {run['returncode']}:\n{run['stderr']}")
    child = json.loads(run["stdout"].strip().splitlines()[-1])
    return dict(child, wall_s=run["wall_s"], cpu_s=run["cpu_s"])


def _warm_up(cache_dir: str) -> dict:
    """``python -m tasks.compute.warm`` on ``cache_dir``: its wall and CPU seconds."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    run = timed_run([sys.executable, "-m", "tasks.compute.warm"], env)
    if run["returncode"] != 0:
        raise RuntimeError(f"warm-up exited {run['returncode']}:\n{run['stderr']}")
    return dict(wall_s=run["wall_s"], cpu_s=run["cpu_s"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the pipeline workload only")
    p.add_argument("--child", choices=WORKLOADS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child)
        return
    rows = []
    for workload in WORKLOADS[:1] if args.quick else WORKLOADS:
        with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache_dir:
            cold = _run_child(workload, cache_dir)
            warm = _run_child(workload, cache_dir)
        with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache_dir:
            warm_up = _warm_up(cache_dir)
            after = _run_child(workload, cache_dir)
        rows.append(dict(workload=workload, cold=cold, warm=warm, warm_up=warm_up, after=after))
        print(f"{workload}: cold {cold['wall_s']:.1f} s, warm {warm['wall_s']:.1f} s", flush=True)
    lines = [
        "# Kernel compilation: first run (empty numba cache) vs warm",
        "",
        "Whole process (start, imports, workload); CPU = user + sys of the process.",
        "",
        "| workload | cold wall (s) | warm wall (s) | extra wall (s) | cold CPU (s) "
        "| warm CPU (s) | extra CPU (s) | functions compiled | goal | met |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        cold, warm = r["cold"], r["warm"]
        extra_wall = cold["wall_s"] - warm["wall_s"]
        extra_cpu = cold["cpu_s"] - warm["cpu_s"]
        r["met"] = bool(extra_cpu <= GOAL_S)
        lines.append(
            f"| {r['workload']} | {cold['wall_s']:.1f} | {warm['wall_s']:.1f} | {extra_wall:.1f} "
            f"| {cold['cpu_s']:.1f} | {warm['cpu_s']:.1f} | {extra_cpu:.1f} "
            f"| {cold['compiled']} | extra CPU <= {GOAL_S:.0f} s | {'yes' if r['met'] else 'NO'} |"
        )
    lines += [
        "",
        "After the warm-up (`python -m tasks.compute.warm` on an empty cache, then the workload):",
        "",
        "| workload | warm-up wall (s) | warm-up CPU (s) | first run wall (s) | first run CPU (s) "
        "| extra CPU over warm (s) | functions compiled |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        up, after = r["warm_up"], r["after"]
        lines.append(
            f"| {r['workload']} | {up['wall_s']:.1f} | {up['cpu_s']:.1f} | {after['wall_s']:.1f} "
            f"| {after['cpu_s']:.1f} | {after['cpu_s'] - r['warm']['cpu_s']:.1f} "
            f"| {after['compiled']} |"
        )
    lines += ["", "Slowest compilations of the cold runs (own CPU seconds):", ""]
    for r in rows:
        slowest = ", ".join(
            f"{name.split('.')[-1]} {spent:.1f}" for name, spent in r["cold"]["slowest"]
        )
        lines.append(f"- {r['workload']}: {slowest}")
    load = os.getloadavg()
    lines += [
        "",
        f"Load average (1/5/15 min) at the end: {'/'.join(f'{v:.2f}' for v in load)} "
        "(other processes inflate wall times; CPU times much less).",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "compile_time.md").write_text(text + "\n")
    (RESULTS / "compile_time.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
