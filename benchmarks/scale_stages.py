"""Where a large training's time and memory go: the pipeline's stages in one process.

    uv run python -m benchmarks.scale_stages DATA.csv [--set key=value ...] [--champion]

Runs the training flow's stage functions (`flows/stages.py`, memory engine) one after
another on ``DATA.csv`` in a temporary project folder (MLflow on a sqlite file there), without
Prefect, and prints per stage: wall and CPU seconds, the process's peak resident set during
the stage (``VmHWM``, reset before each stage through ``/proc/self/clear_refs``) and its
resident set after it. The train stage is split into the sweep (k-means per k), the per-k
scoring and the evaluation (profiles, bootstrap stability). With ``--champion`` a first
training is registered and promoted, so the measured one goes through the gate against it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _status(field: str) -> float:
    """A ``/proc/self/status`` memory field in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


class Stages:
    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float, float, float]] = []

    @contextlib.contextmanager
    def stage(self, name: str):
        _reset_peak()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        yield
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        self.rows.append((name, wall, cpu, _status("VmHWM"), _status("VmRSS")))
        print(f"{name}: {wall:.2f} s", file=sys.stderr, flush=True)

    def table(self) -> str:
        lines = [
            "| stage | wall (s) | CPU (s) | peak RSS in stage (MB) | RSS after (MB) |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, wall, cpu, peak, after in self.rows:
            lines.append(f"| {name} | {wall:.2f} | {cpu:.2f} | {peak:.0f} | {after:.0f} |")
        total_wall = sum(row[1] for row in self.rows)
        total_cpu = sum(row[2] for row in self.rows)
        peak = max(row[3] for row in self.rows)
        lines.append(f"| total | {total_wall:.2f} | {total_cpu:.2f} | {peak:.0f} | |")
        return "\n".join(lines)


class _TimedEngine:
    """The memory engine, its sweep and evaluation timed as stages of their own."""

    def __init__(self, stages: Stages) -> None:
        from tasks.engine import MEMORY

        self.stages, self.engine, self.name = stages, MEMORY, MEMORY.name

    def sweep(self, *args):
        with self.stages.stage("train: sweep (k-means per k) + scores"):
            return self.engine.sweep(*args)

    def evaluate(self, *args):
        with self.stages.stage("train: evaluate (profiles, bootstrap stability)"):
            return self.engine.evaluate(*args)


def _train(params, stages: Stages, promote_it: bool) -> None:
    from flows import stages as flow_stages
    from tasks import promote
    from tasks.tracking.layout import RunTag

    with stages.stage("import + ingest"):
        data = flow_stages.ingest_stage(params)
    with stages.stage("validate"):
        report = flow_stages.validate_stage(params, data)
    assert report.success, report.failures
    with stages.stage("prepare"):
        prepared = flow_stages.prepare_stage(params, data)
    champion = flow_stages.current_champion(params.register_.model_name)
    trained = flow_stages.train_stage(params, data, prepared, champion, _TimedEngine(stages))
    tags = {**flow_stages.training_tags(params, data), RunTag.VALIDATION_SUCCESS: "true"}
    with tempfile.TemporaryDirectory() as scratch:
        with stages.stage("plots-and-reports"):
            record = flow_stages.training_record(
                params, data, prepared, trained, None, Path(scratch), tags, []
            )
        with stages.stage("register"):
            registration = flow_stages.register_stage(params, record)
    if promote_it:
        with stages.stage("promote (gate)"):
            decision = promote.promote(
                registration.model_name,
                registration.model_version,
                params.promote,
                params.cluster.silhouette_sample,
                params.cluster.seed,
            )
        print(f"gate: {decision.reasons}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a CSV or Parquet file")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--champion", action="store_true", help="train and promote one first")
    args = parser.parse_args(argv)
    data = Path(args.data).resolve()
    with tempfile.TemporaryDirectory(prefix="popseg-scale-") as folder:
        os.chdir(folder)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
        from tasks.config import load_params

        params = load_params(ROOT / "params.yaml", [f"data.path={data}", *args.overrides])
        if args.champion:
            _train(params, Stages(), promote_it=True)
        stages = Stages()
        _train(params, stages, promote_it=True)
        print(stages.table())
        print(f"\nload average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
