"""The whole pipeline as a user runs it: refusals, the warm main job, cold compilation, scale.

    uv run python -m benchmarks.pipeline            # full sizes (500k x 20, median of 3)
    uv run python -m benchmarks.pipeline --quick    # 100k x 20, one timed run each
    uv run python -m benchmarks.pipeline --only refusal,warm   # those rows, printed only

Every row is one whole command in a fresh process, in a temporary project folder (the
repository's params.yaml, ``MLFLOW_TRACKING_URI`` on a sqlite file there), timed for wall
seconds, CPU seconds (user + sys of the process and the children it waited for) and peak
resident set (``ru_maxrss`` of that process or of the largest of those children):

1. refusal: ``popseg train`` on a missing path, an empty file, a binary file, and a bad
   ``--set cluster.k_max=x``, in a process of its own (no runner: the slower case):
   seconds to refuse and the exit code (goal <= 2 s);
2. warm main job: ``popseg run --no-deploy`` (bundled crime data) and ``popseg train`` on a
   50-row CSV, once to warm every cache, then the median of N timed runs (goals <= 10 s and
   <= 6 s), in three set-ups: the default (the kept Prefect server and the warm runner,
   ``POPSEG_WARM_RUNNER=on``: the command runs in a forked child of a process that holds
   the imports; its CPU and peak RSS are the child's, from the runner's log), each command in
   its own process with the kept server, and with a server of its own; both are stopped at
   the end; bytecode is cached (no ``PYTHONDONTWRITEBYTECODE``);
3. cold compilation: that ``popseg train`` with an empty ``NUMBA_CACHE_DIR``, then again on
   the same (now filled) cache: the difference is numba's compilation (goal <= 10 s);
4. scale: a seeded blobs CSV of 500k x 20 floats (quick: 100k) through ``popseg train``
   with the default params (after a warm-up on a smaller file of the same shape, which
   starts the warm runner), in the runner and, on a second file of the same shape (another
   seed: also a cache miss), in a process of its own; per stage
   from the timestamps of Prefect's task lines on stderr (1 s resolution), next to the
   anchor: a plain scikit-learn script doing the same stages on the same file (pandas
   read_csv, SimpleImputer, StandardScaler, PCA at params' variance fraction, KMeans for
   k_min..k_max with params' n_init/max_iter/tol/seed, silhouette per k on a sample of
   params' cluster.silhouette_sample rows) in its own process (goals <= 20 s, <= 1 GB).

Writes benchmarks/results/pipeline[-quick].md and .json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.compile_time import timed_run

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
POPSEG = str(Path(sys.executable).parent / "popseg")
#: a command that runs longer than this is killed (its row then shows the kill)
TIMEOUT_S = 1800
GROUPS = ("refusal", "warm", "compile", "scale")
REFUSE_GOAL_S = 2.0
RUN_GOAL_S = 10.0
TRAIN_GOAL_S = 6.0
COMPILE_GOAL_S = 10.0
SCALE_GOAL_S = 20.0
SCALE_GOAL_MB = 1024.0

_LINE = re.compile(r"^(\d\d):(\d\d):(\d\d) \w+\s+(\S+): (.*)$")
_TASK_DONE = re.compile(r"Finished in state \w+\(.*\) \[(.+)-[0-9a-f]{3,}\]$")


# --- the scikit-learn anchor (run in its own process) --------------------------------------


def _anchor(csv: str, params_path: str) -> None:
    """The pipeline's stages in plain scikit-learn on ``csv``; prints per-stage seconds."""
    import numpy as np
    import pandas as pd
    import yaml
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.impute import SimpleImputer
    from sklearn.metrics import silhouette_score
    from sklearn.preprocessing import StandardScaler

    params = yaml.safe_load(Path(params_path).read_text())
    cl = params["cluster"]
    stages: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name):
        nonlocal t
        now = time.perf_counter()
        stages[name] = now - t
        t = now

    df = pd.read_csv(csv)
    X = df.select_dtypes("number").to_numpy(dtype=np.float64)
    lap("read CSV (pandas)")
    X = SimpleImputer(strategy=params["impute"]["strategy"]).fit_transform(X)
    lap("impute (SimpleImputer)")
    X = StandardScaler().fit_transform(X)
    lap("scale (StandardScaler)")
    X = PCA(params["reduce"]["n_components"], random_state=cl["seed"]).fit_transform(X)
    lap(f"PCA({params['reduce']['n_components']}) -> {X.shape[1]} components")
    rng = np.random.default_rng(cl["seed"])
    sample = np.sort(rng.choice(len(X), size=min(len(X), cl["silhouette_sample"]), replace=False))
    kw = dict(n_init=cl["n_init"], max_iter=cl["max_iter"], tol=cl["tol"])
    fit_s = score_s = 0.0
    for k in range(cl["k_min"], cl["k_max"] + 1):
        t0 = time.perf_counter()
        model = KMeans(k, random_state=cl["seed"], **kw).fit(X)
        t1 = time.perf_counter()
        silhouette_score(X[sample], model.labels_[sample])
        fit_s += t1 - t0
        score_s += time.perf_counter() - t1
    stages[f"KMeans k={cl['k_min']}..{cl['k_max']}, n_init={cl['n_init']}"] = fit_s
    stages[f"silhouette per k on {len(sample)} rows"] = score_s
    print(json.dumps(dict(stages=stages, rows=len(X))))


# --- helpers --------------------------------------------------------------------------------


def _write_blobs(path: Path, n: int, d: int = 20, seed: int = 0) -> None:
    """A seeded make_blobs-like float CSV (8 centers), written in chunks."""
    import numpy as np
    import pandas as pd

    from benchmarks.run import _blobs

    X, _ = _blobs(n, d, 8, seed, dtype=np.float64)
    cols = [f"x{i}" for i in range(d)]
    step = 100_000
    for start in range(0, n, step):
        pd.DataFrame(X[start : start + step], columns=cols).to_csv(
            path, mode="a" if start else "w", header=not start, index=False, float_format="%.6g"
        )


def _small_csv(path: Path, rows: int = 50, seed: int = 0) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=5.0, size=(3, 5))
    X = centers[np.arange(rows) % 3] + rng.normal(size=(rows, 5))
    lines = [",".join(f"f{i}" for i in range(5))]
    lines += [",".join(f"{v:.4f}" for v in row) for row in X]
    path.write_text("\n".join(lines) + "\n")


def _stage_split(stderr: str, started: dt.datetime, wall: float) -> list[list]:
    """Per-stage seconds from the timestamps of Prefect's lines on stderr: start-up (to the
    flow run's first line), then each task to its 'Finished' line, then the exit."""
    base = started.hour * 3600 + started.minute * 60 + started.second + started.microsecond / 1e6
    marks: list[tuple[str, float]] = []
    for line in stderr.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        hh, mm, ss, logger, msg = m.groups()
        at = (int(hh) * 3600 + int(mm) * 60 + int(ss) - base) % 86400
        if at > 86400 - 1:  # the same second as the start, truncated below it (a warm runner)
            at = 0.0
        if logger == "prefect.flow_runs" and msg.startswith("Beginning flow run"):
            marks.append(("start-up (imports, Prefect server, flow start)", at))
        elif logger == "prefect.task_runs" and (done := _TASK_DONE.search(msg)):
            marks.append((done.group(1), at))
        elif logger == "prefect.flow_runs" and msg.startswith("Finished in state"):
            marks.append(("flow wrap-up (after the last task)", at))
    stages, prev = [], 0.0
    for name, at in marks:
        stages.append([name, max(0.0, at - prev)])
        prev = at
    if marks:
        stages.append(["exit (server stop, summary)", max(0.0, wall - prev)])
    return stages


class Project:
    """A temporary project folder: params.yaml copied, MLflow on a sqlite file there."""

    def __init__(self, root: Path):
        self.root = root
        shutil.copy(ROOT / "params.yaml", root / "params.yaml")
        self.env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}")
        # Warm means bytecode cached too: with PYTHONDONTWRITEBYTECODE (set in some shells and
        # CI images) every command compiles Prefect's, MLflow's and GX's sources again (~8 s).
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        # Each command in a process of its own unless a row asks for the warm runner.
        self.env["POPSEG_WARM_RUNNER"] = "off"

    def popseg(self, *args: str, env: dict | None = None) -> dict:
        from flows.warm_runner import read_record

        started = dt.datetime.now()
        env = {**self.env, **(env or {})}
        served = len(self.runner_commands())
        runner_up = env["POPSEG_WARM_RUNNER"] == "on" and read_record(self.root) is not None
        run = timed_run([POPSEG, *args], env, self.root, TIMEOUT_S)
        run["stages"] = _stage_split(run["stderr"], started, run["wall_s"])
        run["command"] = "popseg " + " ".join(args)
        commands = self.runner_commands()
        deadline = time.monotonic() + 5  # the runner logs a command once it has reaped it
        while runner_up and len(commands) == served and time.monotonic() < deadline:
            time.sleep(0.02)
            commands = self.runner_commands()
        run["in_runner"] = len(commands) > served
        if run["in_runner"]:
            # The work ran in the runner's child: its CPU and peak RSS (from the runner's
            # log), not only the caller's, which only waited.
            cpu, rss = commands[-1]
            run["cpu_s"] = (run["cpu_s"] or 0.0) + cpu
            run["max_rss_mb"] = max(run["max_rss_mb"] or 0.0, rss)
        return run

    def runner_commands(self) -> list[tuple[float, float]]:
        """(CPU s, peak RSS MB) of each command the project's warm runner ran."""
        log = self.root / ".popseg" / "warm-runner.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return [
            (float(cpu), float(rss))
            for cpu, rss in re.findall(
                r"ended: exit -?\d+, cpu ([\d.]+) s, peak RSS (\d+) MB", text
            )
        ]

    def wait_for_runner(self, timeout_s: float = 300) -> None:
        """Until the runner the last command started listens."""
        from flows.warm_runner import read_record

        deadline = time.monotonic() + timeout_s
        while read_record(self.root) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no warm runner within {timeout_s:g} s")
            time.sleep(0.2)


def _brief(run: dict) -> dict:
    """What goes into the JSON of one run (not its whole output)."""
    last = [ln for ln in run["stderr"].strip().splitlines() if ln.strip()]
    return dict(
        command=run.get("command"),
        returncode=run["returncode"],
        wall_s=round(run["wall_s"], 3),
        cpu_s=None if run["cpu_s"] is None else round(run["cpu_s"], 3),
        max_rss_mb=None if run["max_rss_mb"] is None else round(run["max_rss_mb"], 1),
        stages=run.get("stages"),
        stderr_tail=last[-4:],
    )


def _median(runs: list[dict]) -> dict:
    """The run of median wall time (its own CPU and RSS)."""
    ordered = sorted(runs, key=lambda r: r["wall_s"])
    return ordered[len(ordered) // 2]


def _check_ok(run: dict) -> None:
    if run["returncode"] != 0:
        raise RuntimeError(f"`{run['command']}` exited {run['returncode']}:\n{run['stderr']}")


# --- the benchmark ----------------------------------------------------------------------------


def bench_refusal(proj: Project, small: Path, rows: list[dict]) -> None:
    import random

    (proj.root / "empty.csv").write_bytes(b"")
    (proj.root / "binary.csv").write_bytes(random.Random(0).randbytes(64 * 1024))
    cases = [
        ("missing file", ["train", "--data", "missing.csv"]),
        ("empty file", ["train", "--data", "empty.csv"]),
        ("binary file", ["train", "--data", "binary.csv"]),
        ("bad --set", ["train", "--data", small.name, "--set", "cluster.k_max=x"]),
    ]
    for label, args in cases:
        run = proj.popseg(*args)
        refused = run["returncode"] != 0
        rows.append(
            dict(
                group="refusal",
                name=f"refuse: {label}",
                run=_brief(run),
                goal=f"refused (exit != 0) in <= {REFUSE_GOAL_S:.0f} s",
                met=bool(refused and run["wall_s"] <= REFUSE_GOAL_S),
            )
        )
        print(f"refusal {label}: {run['wall_s']:.1f} s, exit {run['returncode']}", flush=True)


# (label, environment): the default (kept Prefect server, warm runner), then each command in
# its own process with the kept server, then with a server of its own.
WARM_MODES = (
    ("kept server, warm runner", {"POPSEG_PREFECT_SERVER": "keep", "POPSEG_WARM_RUNNER": "on"}),
    ("kept server, own process", {"POPSEG_PREFECT_SERVER": "keep", "POPSEG_WARM_RUNNER": "off"}),
    (
        "per-command server, own process",
        {"POPSEG_PREFECT_SERVER": "per-command", "POPSEG_WARM_RUNNER": "off"},
    ),
)


def bench_warm(proj: Project, small: Path, n: int, rows: list[dict]) -> None:
    """Each warm row in each of WARM_MODES; the kept server and the runner this starts are
    stopped at the end."""
    try:
        for label, env in WARM_MODES:
            _bench_warm_mode(proj, small, n, rows, label, env)
    finally:
        proj.popseg("runner", "stop")
        proj.popseg("prefect", "stop")


def _bench_warm_mode(
    proj: Project, small: Path, n: int, rows: list[dict], label: str, env: dict
) -> None:
    runner = env["POPSEG_WARM_RUNNER"] == "on"
    for name, args, goal in (
        (f"warm popseg run (crime, --no-deploy), {label}", ["run", "--no-deploy"], RUN_GOAL_S),
        (
            f"warm popseg train, 50-row CSV, {label}",
            ["train", "--data", small.name],
            TRAIN_GOAL_S,
        ),
    ):
        _check_ok(proj.popseg(*args, env=env))  # warm-up: numba cache, Prefect, MLflow databases
        if runner:
            proj.wait_for_runner()  # the warm-up started it (or it was running)
        runs = [proj.popseg(*args, env=env) for _ in range(n)]
        for run in runs:
            _check_ok(run)
            if runner and not run["in_runner"]:
                raise RuntimeError(f"`{run['command']}` did not run in the warm runner")
        med = _median(runs)
        rows.append(
            dict(
                group="warm",
                name=f"{name}, median of {n}",
                run=_brief(med),
                all_wall_s=[round(r["wall_s"], 2) for r in runs],
                goal=f"<= {goal:.0f} s",
                met=bool(med["wall_s"] <= goal),
            )
        )
        print(f"{name}: {[round(r['wall_s'], 1) for r in runs]} s", flush=True)


def bench_compile(proj: Project, small: Path, rows: list[dict]) -> None:
    # new data for each run: the same file again would hit Prefect's result cache of the
    # prepare and train steps and run no kernel at all
    files = []
    for seed in (1, 2, 3):
        files.append(proj.root / f"small_{seed}.csv")
        _small_csv(files[-1], seed=seed)
    # The project's own first run (MLflow's and Prefect's databases created, the registered
    # model made) on the usual, warm kernel cache: the cold run must differ from the warm
    # one by the kernels' compilation only, also when no other group ran before.
    _check_ok(proj.popseg("train", "--data", files[2].name))
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache_dir:
        env = dict(NUMBA_CACHE_DIR=cache_dir)
        cold = proj.popseg("train", "--data", files[0].name, env=env)
        warm = proj.popseg("train", "--data", files[1].name, env=env)
    _check_ok(cold)
    _check_ok(warm)
    extra_wall = cold["wall_s"] - warm["wall_s"]
    extra_cpu = cold["cpu_s"] - warm["cpu_s"]
    for label, run in (("cold (empty NUMBA_CACHE_DIR)", cold), ("warm (same cache)", warm)):
        rows.append(
            dict(
                group="compile",
                name=f"popseg train, 50-row CSV, {label}",
                run=_brief(run),
                goal="-",
                met=None,
            )
        )
    rows.append(
        dict(
            group="compile",
            name="compilation: cold minus warm",
            run=dict(wall_s=round(extra_wall, 3), cpu_s=round(extra_cpu, 3)),
            goal=f"<= {COMPILE_GOAL_S:.0f} s more than warm (wall)",
            met=bool(extra_wall <= COMPILE_GOAL_S),
        )
    )
    print(f"compilation: cold {cold['wall_s']:.1f} s, warm {warm['wall_s']:.1f} s", flush=True)


def bench_scale(proj: Project, n: int, rows: list[dict]) -> dict:
    big = proj.root / f"blobs_{n}x20.csv"
    _write_blobs(big, n)
    warm_n = min(n, 50_000)
    warmup = proj.root / f"blobs_{warm_n}x20.csv"
    _write_blobs(warmup, warm_n, seed=1)
    # The warm-up's version becomes the champion, so the measured run goes through the whole
    # gate: the champion re-scored on the rows the run logged (a seeded sample of a file above
    # register.log_data_max_mb).
    # The second file (other seed, same shape) is a cache miss as the first is: the same
    # work in a process of its own.
    big_own = proj.root / f"blobs_{n}x20_seed2.csv"
    _write_blobs(big_own, n, seed=2)
    runner = {"POPSEG_WARM_RUNNER": "on"}
    try:
        _check_ok(proj.popseg("train", "--data", warmup.name, env=runner))  # large-input paths
        proj.wait_for_runner()  # that command started it
        ours = proj.popseg("train", "--data", big.name, env=runner)
        _check_ok(ours)
        if not ours["in_runner"]:
            raise RuntimeError("the scale run did not run in the warm runner")
        own = proj.popseg("train", "--data", big_own.name)
        _check_ok(own)
    finally:  # nothing of this project outlives the benchmark
        proj.popseg("runner", "stop")
        proj.popseg("prefect", "stop")
    ref = timed_run(
        [
            sys.executable,
            "-m",
            "benchmarks.pipeline",
            "--anchor",
            str(big),
            "--params",
            str(proj.root / "params.yaml"),
        ],
        proj.env,
        ROOT,
        TIMEOUT_S,
    )
    if ref["returncode"] != 0:
        raise RuntimeError(f"scikit-learn anchor exited {ref['returncode']}:\n{ref['stderr']}")
    ref_stages = json.loads(ref["stdout"].strip().splitlines()[-1])["stages"]
    size_mb = big.stat().st_size / 2**20
    label = f"{n // 1000}k x 20 CSV ({size_mb:.0f} MB)"
    for where, run in (("warm runner", ours), ("own process", own)):
        rows.append(
            dict(
                group="scale",
                name=f"popseg train (gated against a champion), {label}, {where}",
                run=_brief(run),
                goal=f"<= {SCALE_GOAL_S:.0f} s, <= {SCALE_GOAL_MB / 1024:.0f} GB",
                met=bool(run["wall_s"] <= SCALE_GOAL_S and run["max_rss_mb"] <= SCALE_GOAL_MB),
            )
        )
    rows.append(
        dict(
            group="scale",
            name=f"anchor: scikit-learn script, {label}",
            run=dict(_brief(ref), command="python -m benchmarks.pipeline --anchor CSV"),
            goal="-",
            met=None,
        )
    )
    ratio = dict(
        wall=ours["wall_s"] / ref["wall_s"],
        cpu=ours["cpu_s"] / ref["cpu_s"],
        rss=ours["max_rss_mb"] / ref["max_rss_mb"],
    )
    print(
        f"scale {label}: popseg {ours['wall_s']:.1f} s, scikit-learn {ref['wall_s']:.1f} s "
        f"(popseg / sklearn: wall {ratio['wall']:.2f}x)",
        flush=True,
    )
    print(f"scale {label}, own process: popseg {own['wall_s']:.1f} s", flush=True)
    return dict(
        n=n,
        csv_mb=size_mb,
        popseg_stages=ours["stages"],
        sklearn_stages=[[k, v] for k, v in ref_stages.items()],
        ratio=ratio,
    )


def _num(v, fmt=".1f") -> str:
    return "-" if v is None else format(v, fmt)


def _fmt_row(r: dict) -> str:
    run = r["run"]
    rss = run.get("max_rss_mb")
    rc = run.get("returncode")
    met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
    return (
        f"| {r['name']} | {run['wall_s']:.1f} | {_num(run['cpu_s'])} "
        f"| {_num(rss, '.0f')} | {_num(rc, 'd')} "
        f"| {r['goal']} | {met} |"
    )


def _report(rows: list[dict], scale: dict | None, env: dict) -> str:
    q = env["quick"]
    lines = [
        f"# popseg end to end: whole commands in fresh processes{' (quick)' if q else ''}",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores (nproc). Python {env['python']}. "
        "Each command in a temporary project folder (repository params.yaml, MLflow on "
        "sqlite there); CPU = user + sys of the process and its waited-for children; peak "
        "RSS = the largest of them.",
        "",
        "| command | wall (s) | CPU (s) | peak RSS (MB) | exit | goal | met |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    lines += [_fmt_row(r) for r in rows]
    for r in rows:
        if r["group"] == "refusal":
            tail = r["run"]["stderr_tail"]
            said = [ln for ln in tail if ln.startswith("error")] or tail[-1:]
            lines.append(f"- {r['name']}: `{said[0] if said else ''}`")
    warm = [r for r in rows if r["group"] == "warm" and r["run"].get("stages")]
    if warm:
        lines += [
            "",
            "Warm rows, per stage of the median run (from the timestamps of the log lines on "
            "stderr, 1 s resolution):",
            "",
            "| stage | " + " | ".join(r["name"].rsplit(", median", 1)[0] for r in warm) + " |",
            "|---|" + "---:|" * len(warm),
        ]
        names = list(dict.fromkeys(n for r in warm for n, _ in r["run"]["stages"]))
        for name in names:
            cells = [dict(r["run"]["stages"]).get(name) for r in warm]
            shown = ["" if c is None else f"{c:.0f}" for c in cells]
            lines.append(f"| {name} | " + " | ".join(shown) + " |")
    if scale:
        ratio = scale["ratio"]
        lines += [
            "",
            f"Scale, {scale['n'] // 1000}k x 20 ({scale['csv_mb']:.0f} MB CSV): popseg / "
            f"scikit-learn = {ratio['wall']:.2f}x wall, {ratio['cpu']:.2f}x CPU, "
            f"{ratio['rss']:.2f}x peak RSS.",
            "",
            "Per stage (popseg: from the timestamps of Prefect's lines on stderr, 1 s "
            "resolution; scikit-learn: timed in the script, process start-up and imports "
            "not included):",
            "",
            "| popseg stage | s | scikit-learn stage | s |",
            "|---|---:|---|---:|",
        ]
        ours, ref = scale["popseg_stages"], scale["sklearn_stages"]
        for i in range(max(len(ours), len(ref))):
            a = ours[i] if i < len(ours) else ["", None]
            b = ref[i] if i < len(ref) else ["", None]
            lines.append(
                f"| {a[0]} | {'' if a[1] is None else f'{a[1]:.0f}'} "
                f"| {b[0]} | {'' if b[1] is None else f'{b[1]:.1f}'} |"
            )
    lines += [
        "",
        f"Total benchmark time: {env['total_s']:.0f} s. Load average (1/5/15 min) at start "
        f"{'/'.join(f'{v:.2f}' for v in env['loadavg_start'])}, at end "
        f"{'/'.join(f'{v:.2f}' for v in env['loadavg_end'])}.",
    ]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="100k rows, one timed run each")
    p.add_argument("--rows", type=int, help="rows of the scale CSV (default 500k, quick 100k)")
    p.add_argument(
        "--only",
        help=f"comma-separated groups to run ({','.join(GROUPS)}); the table is printed, "
        "not written to results/",
    )
    p.add_argument("--anchor", help=argparse.SUPPRESS)
    p.add_argument("--params", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.anchor:
        _anchor(args.anchor, args.params)
        return
    from benchmarks.run import _cpu_model

    q = args.quick
    only = set(args.only.split(",")) if args.only else set(GROUPS)
    if not only <= set(GROUPS):
        p.error(f"--only: unknown group(s) {sorted(only - set(GROUPS))}; choose from {GROUPS}")
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    rows: list[dict] = []
    # A server still writing its log as the folder goes must not lose the results.
    with tempfile.TemporaryDirectory(prefix="popseg-bench-", ignore_cleanup_errors=True) as tmp:
        proj = Project(Path(tmp))
        small = proj.root / "small.csv"
        _small_csv(small)
        scale = None
        if "refusal" in only:
            bench_refusal(proj, small, rows)
        if "warm" in only:
            bench_warm(proj, small, 1 if q else 3, rows)
        if "compile" in only:
            bench_compile(proj, small, rows)
        if "scale" in only:
            scale = bench_scale(proj, args.rows or (100_000 if q else 500_000), rows)
    env = dict(
        cpu=_cpu_model(),
        cores=os.cpu_count(),
        python=sys.version.split()[0],
        quick=q,
        total_s=time.perf_counter() - t0,
        loadavg_start=load_start,
        loadavg_end=os.getloadavg(),
    )
    text = _report(rows, scale, env)
    print(text)
    if args.only:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "pipeline-quick" if q else "pipeline"
    (RESULTS / f"{stem}.md").write_text(text + "\n")
    payload = dict(env=env, rows=rows, scale=scale)
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
