"""The progress reporter (tasks/progress.py): plain lines and their throttle off a terminal,
Rich bars on one, and the progress callbacks of the estimators and steps that feed it."""

from __future__ import annotations

import io
import logging
import re
import sys
import threading

import numpy as np
import pandas as pd
import pytest

from tasks import progress as progress_module
from tasks.progress import LINES, LineReporter, progress, silenced

ANSI = re.compile(r"\x1b\[")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TerminalBuffer(io.StringIO):
    """What Rich sees as a terminal."""

    def isatty(self) -> bool:
        return True


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tasks.progress"]


@pytest.fixture
def progress_lines(caplog, monkeypatch):
    """Plain-mode lines, with no minimum gap between milestones (these loops take no time)."""
    monkeypatch.setattr(progress_module, "MIN_GAP_S", 0.0)
    caplog.set_level(logging.INFO, logger="tasks.progress")
    return lambda: _lines(caplog)


def test_a_quick_step_logs_its_start_and_end_only(caplog):
    caplog.set_level(logging.INFO, logger="tasks.progress")
    clock = FakeClock()
    reporter = LineReporter("k-means k=2..12", 11, "k", clock=clock)
    reporter(0)
    for done in range(1, 12):
        clock.now += 0.05
        reporter(done)
    reporter.finish(completed=True)
    lines = _lines(caplog)
    assert lines[0] == "k-means k=2..12: 0/11 k, 0.0 s" and len(lines) == 2
    assert lines[1].startswith("k-means k=2..12: 11/11 k, 0.")
    clock.now += progress_module.MIN_GAP_S
    slow = LineReporter("refits", 20, "refits", clock=clock)
    slow(0)
    clock.now += progress_module.MIN_GAP_S
    slow(2)  # a milestone, long enough after the last line
    assert _lines(caplog)[-1].startswith("refits: 2/20 refits, 2.0 s")


def test_plain_lines_at_milestones_and_the_last_step(progress_lines):
    with progress("refits", 100, "refits", stream=io.StringIO()) as on_step:
        for done in range(1, 101):
            on_step(done)
    lines = progress_lines()
    # the start, about LINES milestones, the end; never a line per step
    assert lines[0] == "refits: 0/100 refits, 0.0 s"
    assert lines[-1].startswith("refits: 100/100 refits, ")
    assert 3 <= len(lines) <= LINES + 2
    counts = [int(re.search(r": (\d+)/100", line).group(1)) for line in lines]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)


def test_a_line_per_k_of_a_sweep_with_its_sub_counts(progress_lines):
    with progress("k-means k=2..12", 11, "k", stream=io.StringIO()) as on_step:
        for done in range(1, 12):
            on_step(done, iteration=3 * done, runs_moving=11 - done)
    lines = progress_lines()
    assert len(lines) == 12  # 0/11 .. 11/11
    assert lines[5].startswith("k-means k=2..12: 5/11 k (iteration 15, runs moving 6), ")
    assert all(not ANSI.search(line) and "\r" not in line for line in lines)


def test_eta_and_heartbeat_from_the_clock(caplog):
    caplog.set_level(logging.INFO, logger="tasks.progress")
    clock = FakeClock()
    reporter = LineReporter("passes", 300, "passes", clock=clock)
    reporter(0)
    clock.now += 10.0
    reporter(25)  # the first milestone (300 / LINES)
    assert _lines(caplog)[-1] == "passes: 25/300 passes, 10.0 s, about 1 min 50 s left"
    clock.now += 1.0
    reporter(26)  # between milestones, soon after the last line: quiet
    assert len(_lines(caplog)) == 2
    clock.now += progress_module.HEARTBEAT_S
    reporter(27)  # a slow step still gets a line now and then
    assert _lines(caplog)[-1].startswith("passes: 27/300 passes, 41.0 s, about ")
    reporter.finish(completed=True)  # converged early: the step ends at its own count
    assert _lines(caplog)[-1] == "passes: 27/27 passes, 41.0 s"


def test_a_failed_step_says_where_it_stopped_and_the_error_propagates(progress_lines):
    step = progress("k-means passes", 300, "passes", stream=io.StringIO())
    with pytest.raises(RuntimeError, match="lost"), step as on_step:
        on_step(7)
        raise RuntimeError("lost")
    assert progress_lines()[-1].startswith("k-means passes: 7/300 passes, ")
    assert progress_lines()[-1].endswith("(stopped)")


def test_bars_on_a_terminal_and_no_log_lines(progress_lines):
    terminal = TerminalBuffer()
    stderr_before = sys.stderr
    with progress("bootstrap refits", 20, "refits", stream=terminal) as on_step:
        for done in range(1, 21):
            on_step(done)
        # a log record written meanwhile goes through Rich, above the bars
        assert sys.stderr is not stderr_before
    assert sys.stderr is stderr_before
    drawn = terminal.getvalue()
    assert "bootstrap refits" in drawn and "20/20" in drawn and "━" in drawn
    assert ANSI.search(drawn)  # cursor control of a live display
    assert progress_lines() == []


def test_steps_open_at_once_in_threads_share_one_display():
    """Prefect runs tasks in threads; Rich allows one live display per process."""
    terminal = TerminalBuffer()
    errors: list[BaseException] = []
    started = threading.Barrier(4)

    def step(name: str) -> None:
        try:
            with progress(name, 50, "items", stream=terminal) as on_step:
                started.wait(timeout=10)
                for done in range(1, 51):
                    on_step(done)
        except BaseException as error:  # collected for the assertion
            errors.append(error)

    threads = [threading.Thread(target=step, args=(f"step-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    drawn = terminal.getvalue()
    assert all(f"step-{i}" in drawn for i in range(4))
    assert progress_module._BARS._progress is None  # stopped with the last step


def test_silenced_reports_nothing(progress_lines):
    terminal = TerminalBuffer()
    with silenced(), progress("sweep", 11, "k", stream=terminal) as on_step:
        on_step(5)
    assert terminal.getvalue() == "" and progress_lines() == []


# ------------------------------------------------------------------ the callbacks that feed it


def test_kmeans_sweep_reports_each_k_finished_between_passes(blobs):
    from tasks.compute import KMeansSweep

    values, _ = blobs
    calls = []
    options = {"k_values": range(2, 7), "n_init": 3, "random_state": 0}
    reported = KMeansSweep(**options).fit(values, on_step=lambda *a, **kw: calls.append((a, kw)))
    plain = KMeansSweep(**options).fit(values)
    done = [args[0] for args, _ in calls]
    assert all(args[1] == 5 for args, _ in calls)
    assert done == sorted(done) and done[-1] == 5
    assert calls[0][1] == {"iteration": 0, "runs_moving": 15}  # after the seeding
    assert calls[-1][1]["runs_moving"] == 0
    iterations = [kw["iteration"] for _, kw in calls]
    # one call per Lloyd pass, and a last one once every run is done
    assert iterations[:-1] == list(range(len(calls) - 1)) and iterations[-1] == iterations[-2]
    for k in range(2, 7):  # the callback changes nothing
        np.testing.assert_array_equal(reported.models_[k].labels_, plain.models_[k].labels_)


def test_kmeans_sweep_stopped_at_max_iter_still_ends_with_every_k(blobs):
    from tasks.compute import KMeansSweep

    values, _ = blobs
    calls = []
    KMeansSweep(k_values=range(2, 7), n_init=2, max_iter=1, tol=0.0, random_state=0).fit(
        values, on_step=lambda *a, **kw: calls.append((a, kw))
    )
    assert calls[-1] == ((5, 5), {"iteration": 1, "runs_moving": 0})


def test_knn_imputer_reports_parts_of_the_rows(monkeypatch):
    from tasks.compute import KNNImputer
    from tasks.compute import impute as compute_impute

    rng = np.random.default_rng(0)
    values = rng.normal(size=(400, 4))
    values[rng.random(values.shape) < 0.2] = np.nan
    incomplete = int(np.isnan(values).any(axis=1).sum())
    whole = KNNImputer(n_neighbors=3).fit(values).transform(values)
    monkeypatch.setattr(compute_impute, "_PART_MIN", 64)
    calls = []
    parts = (
        KNNImputer(n_neighbors=3)
        .fit(values)
        .transform(values, on_step=lambda done, total: calls.append((done, total)))
    )
    assert len(calls) >= 3 and calls[-1] == (incomplete, incomplete)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    np.testing.assert_array_equal(parts, whole)  # a part imputes as the whole does


def test_pipeline_steps_log_their_progress(progress_lines, params, blobs):
    from tasks import cluster, evaluate
    from tasks.impute import impute

    values, _ = blobs
    config = params.cluster.model_copy(update={"k_min": 2, "k_max": 6})
    swept = cluster.sweep(values, config)
    evaluate.bootstrap_stability(values, swept.fits[3].labels, 3, config, 20)
    gaps = values.copy()
    gaps[::7, 1] = np.nan
    frame = pd.DataFrame(gaps, columns=["a", "b"])
    impute(frame, params.impute.model_copy(update={"strategy": "knn"}), "numba")
    impute(frame, params.impute.model_copy(update={"strategy": "iterative", "max_iter": 4}))
    lines = progress_lines()

    def last(prefix: str) -> str:
        return [line for line in lines if line.startswith(prefix)][-1]

    assert last("k-means k=2..6 (120 rows): ").startswith("k-means k=2..6 (120 rows): 5/5 k (")
    assert "scoring k (120 rows for silhouette): 5/5 k (last k 6)" in last("scoring k")
    assert "bootstrap refits (k=3, 120 rows): 20/20 refits" in last("bootstrap refits")
    assert "KNN imputation (120 donor rows): 18/18 rows" in last("KNN imputation")
    # up to max_iter rounds of one model per feature; fewer when it converges
    assert re.match(r"iterative imputation: (\d+)/\1 feature fits \(round \d/4\)", last("iter"))
