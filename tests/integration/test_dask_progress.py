"""The Dask engine's progress and dashboard, on a LocalCluster of threads in this process:
the dashboard's URL when bokeh is installed (and the page answers) or the one-line note that
it is off; mapped items and k-means passes reported with their totals."""

from __future__ import annotations

import importlib.util
import logging
import urllib.request

import numpy as np
import pytest


def _square(value: int) -> int:
    return value * value


@pytest.fixture
def session(params):
    from tasks.dask_engine.session import open_session

    config = params.dask.model_copy(
        update={"n_workers": 1, "threads_per_worker": 2, "processes": False}
    )
    with open_session(config) as opened:
        yield opened


def test_dashboard_url_when_bokeh_is_installed_else_a_note(params, caplog):
    from tasks.dask_engine.session import DASHBOARD_OFF, open_session

    caplog.set_level(logging.INFO, logger="tasks.progress")
    config = params.dask.model_copy(
        update={"n_workers": 1, "threads_per_worker": 1, "processes": False}
    )
    with open_session(config) as session:
        url = session.dashboard_url
        if importlib.util.find_spec("bokeh") is not None:
            assert url is not None and url.startswith("http://127.0.0.1:"), url
            with urllib.request.urlopen(url, timeout=30) as response:
                assert response.status == 200
                assert "Dask" in response.read().decode(errors="replace")
            expected = f"dask dashboard: {url}"
        else:
            assert url is None
            expected = DASHBOARD_OFF
    logged = [r.getMessage() for r in caplog.records if r.name == "tasks.progress"]
    assert expected in logged


def test_mapped_items_report_as_each_finishes(session):
    calls: list[tuple[int, int]] = []
    results = session.map(
        "squares", _square, [1, 2, 3, 4, 5], on_step=lambda done, total: calls.append((done, total))
    )
    assert results == [1, 4, 9, 16, 25]  # in the order given, whatever order they finished in
    assert calls == [(done, 5) for done in range(1, 6)]


def test_kmeans_passes_report_with_their_total(session, caplog):
    import dask

    from tasks.dask_engine import kmeans

    caplog.set_level(logging.INFO, logger="tasks.progress")
    rng = np.random.default_rng(2)
    values = np.vstack([rng.normal(c, 0.5, size=(60, 2)) for c in (0.0, 5.0, 10.0)])
    blocks = kmeans.Blocks(
        items=[dask.delayed(np.ascontiguousarray(part)) for part in np.array_split(values, 3)],
        persisted=False,
        estimate_bytes=values.nbytes,
    )
    inits = {2: values[[0, 100]], 3: values[[0, 70, 130]]}
    _, n_iter = kmeans.lloyd(session, blocks, inits, max_iter=50, tol_abs=1e-8)
    lines = [r.getMessage() for r in caplog.records if r.name == "tasks.progress"]
    what = "k-means passes over 3 partitions (k=2..3)"
    assert lines[0] == f"{what}: 0/50 passes, 0.0 s"
    passes = max(n_iter.values())
    # converged before max_iter: the step ends at its own count
    assert lines[-1].startswith(f"{what}: {passes}/{passes} passes (k moving 0), ")
