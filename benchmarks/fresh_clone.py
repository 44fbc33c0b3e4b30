"""A newcomer's first minutes: `make setup` and `make run` on a fresh clone.

    uv run python -m benchmarks.fresh_clone                    # HEAD, 2 runs
    uv run python -m benchmarks.fresh_clone --refs b1c8091,HEAD --runs 2   # A/B, interleaved

Each run clones the repository (``git clone --no-hardlinks``) into a temporary folder,
checks out the ref, and times, each as a whole process: ``make setup`` (uv creates the
environment from uv's package cache, which is warm, as on a machine that has synced popseg
once before; nothing is downloaded) and then ``make run`` (the main job on the bundled data:
every module imported for the first time, every kernel compiled into an empty numba cache,
Prefect's database created). The goal of issue 17 is <= 60 s for the two together.

The environment is the caller's, less anything that points at an existing project or cache
(``NUMBA_CACHE_DIR``, ``PREFECT_API_URL``, ``PREFECT_HOME``, ``MLFLOW_TRACKING_URI``,
``VIRTUAL_ENV``, ``POPSEG_*``). After each run anything still running from the clone (a
background warm-up of an older Makefile, a kept Prefect server) is stopped before the next
run starts, so runs do not share the CPU; how long that took is printed.

Writes benchmarks/results/fresh_clone.md and .json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.compile_time import timed_run

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
GOAL_S = 60.0
#: a make command that runs longer than this is killed (its row then shows the kill)
TIMEOUT_S = 900
#: how long to let leftovers of a run (a background warm-up) finish before stopping them
LEFTOVER_WAIT_S = 120.0
_DROPPED = ("NUMBA_CACHE_DIR", "PREFECT_API_URL", "PREFECT_HOME", "MLFLOW_TRACKING_URI")
_DROPPED += ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")


def clean_environment() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if key not in _DROPPED and not key.startswith("POPSEG_")
    }


def processes_under(folder: Path) -> list[int]:
    """PIDs of this user's processes whose working directory is ``folder`` or below."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cwd = Path(os.readlink(entry / "cwd"))
            if cwd == folder or folder in cwd.parents:
                found.append(int(entry.name))
    return found


def stop_leftovers(clone: Path, env: dict[str, str]) -> tuple[float, int]:
    """Stop what the run left running in ``clone``: a kept Prefect server and a warm runner by
    their own commands (where the checkout has them), then wait for the rest; SIGTERM what is left after
    ``LEFTOVER_WAIT_S``. Returns (seconds waited, processes signalled)."""
    popseg = clone / ".venv" / "bin" / "popseg"
    # The kept Prefect server and the warm runner, where the checkout has them.
    for group in ("prefect", "runner") if popseg.exists() else ():
        has_stop = subprocess.run(
            [str(popseg), group, "stop", "--help"], cwd=clone, env=env, capture_output=True
        )
        if has_stop.returncode == 0:
            subprocess.run([str(popseg), group, "stop"], cwd=clone, env=env, capture_output=True)
    t0 = time.perf_counter()
    while processes_under(clone) and time.perf_counter() - t0 < LEFTOVER_WAIT_S:
        time.sleep(0.5)
    left = processes_under(clone)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    return time.perf_counter() - t0, len(left)


def one_run(ref: str) -> dict:
    """Clone at ``ref``, time `make setup` and `make run`, clean up."""
    env = clean_environment()
    with tempfile.TemporaryDirectory(prefix="popseg-fresh-") as tmp:
        clone = Path(tmp) / "popseg"
        subprocess.run(
            ["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], check=True
        )
        subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", ref], check=True)
        commit = subprocess.run(
            ["git", "-C", str(clone), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        load = os.getloadavg()[0]
        setup = timed_run(["make", "setup"], env, clone, TIMEOUT_S)
        run = timed_run(["make", "run"], env, clone, TIMEOUT_S)
        waited_s, signalled = stop_leftovers(clone, env)
    failed = next((r for r in (setup, run) if r["returncode"] != 0), None)
    return dict(
        ref=ref,
        commit=commit,
        load_before=round(load, 2),
        setup_s=round(setup["wall_s"], 2),
        run_s=round(run["wall_s"], 2),
        total_s=round(setup["wall_s"] + run["wall_s"], 2),
        returncode=failed["returncode"] if failed else 0,
        error_tail=(failed["stderr"].strip().splitlines() or [""])[-3:] if failed else [],
        leftovers_waited_s=round(waited_s, 1),
        leftovers_stopped=signalled,
    )


def _markdown(rows: list[dict], refs: list[str], args: argparse.Namespace) -> str:
    lines = [
        f"# Fresh clone: `make setup` + `make run` ({dt.datetime.now():%Y-%m-%d %H:%M})",
        "",
        f"{os.cpu_count()} CPUs; uv's package cache warm; PYTHONDONTWRITEBYTECODE="
        f"{os.environ.get('PYTHONDONTWRITEBYTECODE', '(unset)')} in the caller's environment; "
        f"{args.runs} run(s) per ref, interleaved. Goal: total <= {GOAL_S:g} s.",
        "",
        "| ref | commit | run | load before | make setup s | make run s | total s | exit |"
        " leftovers |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(rows):
        leftovers = f"{row['leftovers_waited_s']:g} s wait, {row['leftovers_stopped']} stopped"
        lines.append(
            f"| {row['ref']} | {row['commit']} | {i // len(refs) + 1} | {row['load_before']} | "
            f"{row['setup_s']} | {row['run_s']} | {row['total_s']} | {row['returncode']} | "
            f"{leftovers} |"
        )
    lines += ["", "| ref | median total s | min | max | goal met |", "|---|---|---|---|---|"]
    for ref in refs:
        totals = [r["total_s"] for r in rows if r["ref"] == ref and r["returncode"] == 0]
        if not totals:
            lines.append(f"| {ref} | failed | | | no |")
            continue
        median = statistics.median(totals)
        lines.append(
            f"| {ref} | {median:.1f} | {min(totals):.1f} | {max(totals):.1f} | "
            f"{'yes' if median <= GOAL_S else 'NO'} |"
        )
    for row in rows:
        if row["error_tail"]:
            lines += ["", f"{row['ref']} failed: " + " / ".join(row["error_tail"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refs", default="HEAD", help="comma-separated git refs (A/B)")
    parser.add_argument("--runs", type=int, default=2, help="runs per ref (interleaved)")
    parser.add_argument("--out", default="fresh_clone", help="results file stem")
    args = parser.parse_args(argv)
    if shutil.which("make") is None:
        raise SystemExit("error: `make` is not on PATH")
    refs = [ref.strip() for ref in args.refs.split(",") if ref.strip()]
    rows = []
    for _ in range(args.runs):
        for ref in refs:
            row = one_run(ref)
            print(json.dumps(row), flush=True)
            rows.append(row)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(rows, indent=2) + "\n")
    report = _markdown(rows, refs, args)
    (RESULTS / f"{args.out}.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
