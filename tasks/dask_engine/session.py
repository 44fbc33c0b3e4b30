"""The Dask cluster of a run: a LocalCluster sized to the machine, or an existing scheduler
reached within ``dask.connect_timeout_s``; and `DaskSession.compute`, the one way work is
sent to it, which turns cluster failures and unreadable partitions into `PopsegError`s."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tasks.config import DaskConfig
from tasks.errors import DataError, DistributedError, PopsegError
from tasks.progress import announce

logger = logging.getLogger(__name__)

_current: DaskSession | None = None

# Exception names (not types: distributed moves them between versions) that mean the cluster,
# not the data, failed: a worker lost for good, a dropped connection, a cancelled future.
_CLUSTER_FAILURES = (
    "KilledWorker",
    "CommClosedError",
    "CancelledError",
    "FutureCancelledError",
    "TimeoutError",
    "StreamClosedError",
    "ConnectionRefusedError",
    "ConnectionResetError",
    "BrokenPipeError",
    "FutureLostError",
)


class DaskSession:
    """A connected client (and the LocalCluster it owns, if any) for one training run."""

    def __init__(self, client, cluster, config: DaskConfig, address: str) -> None:
        self.client = client
        self.cluster = cluster
        self.config = config
        self.address = address
        self.kernel_threads = config.kernel_threads or _kernel_threads(client)
        with contextlib.suppress(Exception):  # hygiene, not correctness
            client.register_plugin(_worker_plugin())

    # ------------------------------------------------------------------ the cluster

    @property
    def workers(self) -> dict[str, dict[str, Any]]:
        return self.client.scheduler_info(n_workers=-1)["workers"]

    @property
    def n_workers(self) -> int:
        return len(self.workers)

    @property
    def total_threads(self) -> int:
        return sum(int(w.get("nthreads", 1)) for w in self.workers.values())

    @property
    def total_memory(self) -> int | None:
        """Sum of the workers' memory limits in bytes; None when any worker has none."""
        limits = [int(w.get("memory_limit") or 0) for w in self.workers.values()]
        if not limits or min(limits) <= 0:
            return None
        return sum(limits)

    def describe(self) -> str:
        memory = self.total_memory
        shown = f"{memory / 2**30:.1f} GiB memory limit" if memory else "no memory limit"
        kind = "LocalCluster" if self.cluster is not None else "scheduler"
        return (
            f"{self.n_workers} Dask workers ({self.total_threads} threads, {shown}) on the "
            f"{kind} at {self.address}"
        )

    @property
    def dashboard_url(self) -> str | None:
        """Dask's live view of the cluster's tasks: on a LocalCluster started here, its
        address when bokeh is installed (None otherwise); on a scheduler elsewhere, the link
        it advertises (None when it serves no dashboard)."""
        services = self.client.scheduler_info(n_workers=0).get("services", {})
        if "dashboard" not in services:
            return None
        if self.cluster is None:
            return self.client.dashboard_link
        if not dashboard_available():
            return None
        return f"http://{DASHBOARD_HOST}:{services['dashboard']}/status"

    def dashboard_note(self) -> str:
        """One line for the log: the dashboard's URL, or why there is none."""
        url = self.dashboard_url
        if url is not None:
            return f"dask dashboard: {url}"
        if self.cluster is not None:
            return DASHBOARD_OFF
        return f"dask dashboard: none served by the scheduler at {self.address}"

    # ------------------------------------------------------------------ work

    def compute(self, step: str, tasks: Sequence[Any], source: str | None = None) -> list[Any]:
        """Run delayed objects on the cluster; their results in the order given. ``step``
        and ``source`` name what failed in the error."""
        if not tasks:
            return []
        try:
            futures = self.client.compute(list(tasks))
            return self.client.gather(futures)
        except BaseException as error:
            raise self._translate(error, step, source) from error

    def persist(self, tasks: Sequence[Any]) -> list[Any]:
        """Keep delayed results in worker memory (recomputed from their inputs if a worker
        is lost); failures surface when they are computed."""
        return list(self.client.persist(list(tasks)))

    def release(self, tasks: Sequence[Any]) -> None:
        """Drop persisted results from worker memory."""
        for task in tasks:
            with contextlib.suppress(Exception):
                for future in getattr(task, "dask", {}).values():
                    if hasattr(future, "release"):
                        future.release()

    def map(
        self,
        step: str,
        function: Callable[..., Any],
        *iterables: Sequence[Any],
        on_step: Callable[..., None] | None = None,
    ) -> list:
        """``function`` over the zipped ``iterables`` on the workers (plain Dask futures);
        ``on_step(done, total)`` as each one finishes."""
        items = list(zip(*iterables, strict=True))
        if not items:
            return []
        try:
            futures = self.client.map(apply_item, [function] * len(items), items, pure=False)
            if on_step is not None:
                from distributed import as_completed

                finished = as_completed(futures, loop=self.client.loop)
                for done, _ in enumerate(finished, start=1):
                    on_step(done, len(futures))
            return self.client.gather(futures)
        except BaseException as error:
            raise self._translate(error, step, None) from error

    def _translate(self, error: BaseException, step: str, source: str | None) -> BaseException:
        if isinstance(error, PopsegError | KeyboardInterrupt):
            return error
        where = source or "the data"
        if isinstance(error, FileNotFoundError | IsADirectoryError):
            return DataError(f"{where}: {step}: file not found ({error})")
        if isinstance(error, PermissionError):
            return DataError(f"{where}: {step}: access denied ({error})")
        names = {kind.__name__ for kind in type(error).__mro__}
        if names & {"ArrowException", "ArrowInvalid", "ParserError", "EmptyDataError"}:
            return DataError(f"{where}: {step}: not readable: {_first_line(error)}")
        if isinstance(error, ValueError) and "Mismatched dtypes" in str(error):
            return DataError(
                f"{where}: {step}: a column holds values of another type further down the "
                f"file than the rows its type was guessed from: {_mismatch_summary(error)}"
            )
        if names & set(_CLUSTER_FAILURES) or (
            isinstance(error, OSError) and not isinstance(error, FileNotFoundError)
        ):
            return DistributedError(
                f"{step} failed on the Dask cluster at {self.address}: "
                f"{type(error).__name__}: {_first_line(error)}"
            )
        return error

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close(timeout=10)
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close(timeout=20)


def _silence_known_warnings() -> None:
    """dask 2026.8's Parquet reader calls ``reset_index(inplace=True)``, deprecated in pandas
    3.1: one warning per partition read, on every worker."""
    import warnings

    warnings.filterwarnings(
        "ignore", message=r"The inplace keyword in DataFrame\.reset_index", module=r"dask\."
    )


def _release_arrow_memory_to_the_system() -> None:
    """Arrow's default allocator (mimalloc) keeps freed Parquet buffers for reuse: on a worker
    that reads partition after partition they stay in its process memory, which Dask counts
    against the memory limit but cannot spill (measured here: ~600-750 MB instead of
    ~450-500 MB per worker after the prepare stage). The system allocator returns them."""
    import pyarrow

    pyarrow.set_memory_pool(pyarrow.system_memory_pool())


def _worker_plugin():
    from distributed.diagnostics.plugin import WorkerPlugin

    class WorkerSetup(WorkerPlugin):
        name = "popseg-worker-setup"

        def setup(self, worker) -> None:
            _silence_known_warnings()
            _release_arrow_memory_to_the_system()

    return WorkerSetup()


def apply_item(function: Callable[..., Any], item: tuple) -> Any:
    """``function(*item)``: one call of a map over zipped arguments (module-level: picklable)."""
    return function(*item)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


def _mismatch_summary(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    table = [line for line in lines if "|" in line and "Column" not in line and "---" not in line]
    return "; ".join(table[:5]) or lines[0][:300]


def _kernel_threads(client) -> int:
    """numba threads per task: each host's cores shared by the worker threads on it."""
    try:
        cores = client.run(os.cpu_count)
        info = client.scheduler_info(n_workers=-1)["workers"]
    except Exception:
        return 1
    per_host: dict[str, list[int]] = {}
    for address, worker in info.items():
        host = worker.get("host", address)
        entry = per_host.setdefault(host, [0, int(cores.get(address) or 1)])
        entry[0] += int(worker.get("nthreads", 1))
    if not per_host:
        return 1
    return max(1, min(host_cores // max(threads, 1) for threads, host_cores in per_host.values()))


def _connect(address: str, timeout_s: float):
    import distributed

    try:
        return distributed.Client(address, timeout=f"{timeout_s}s", set_as_default=False)
    except ValueError as error:
        raise DistributedError(
            f"dask.scheduler {address!r} is not a Dask scheduler address ({_first_line(error)}); "
            "expected e.g. tcp://host:8786"
        ) from None
    except (OSError, TimeoutError) as error:
        raise DistributedError(
            f"cannot reach the Dask scheduler at {address} within {timeout_s:g} s "
            f"({_first_line(error)}); check --scheduler / dask.scheduler and that the "
            "scheduler is running"
        ) from None


def dashboard_available() -> bool:
    """Dask's dashboard needs bokeh (the ``dask`` extra installs it)."""
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


DASHBOARD_HOST = "127.0.0.1"
DASHBOARD_OFF = "dask dashboard: off (bokeh is not installed; `pip install bokeh` turns it on)"


def _local_cluster(config: DaskConfig):
    import distributed

    kwargs: dict[str, Any] = {
        "processes": config.processes,
        "memory_limit": config.memory_limit or "auto",
        # The scheduler's HTTP server (the dashboard when bokeh is installed; health and
        # metrics routes always) on a free port of this machine only: several runs may each
        # have one open.
        "dashboard_address": f"{DASHBOARD_HOST}:0",
        "silence_logs": logging.ERROR,
    }
    if config.n_workers is not None:
        kwargs["n_workers"] = config.n_workers
    if config.threads_per_worker is not None:
        kwargs["threads_per_worker"] = config.threads_per_worker
    try:
        return distributed.LocalCluster(**kwargs)
    except (OSError, ValueError, TimeoutError, RuntimeError) as error:
        raise DistributedError(
            f"cannot start a local Dask cluster: {_first_line(error)} (a script that starts "
            "one with process workers must run its code under `if __name__ == '__main__':`)"
        ) from None


@contextlib.contextmanager
def open_session(config: DaskConfig, scheduler: str | None = None) -> Iterator[DaskSession]:
    """A session on ``scheduler`` (default ``dask.scheduler``), or on a LocalCluster started
    here and stopped on exit. It is also the `current` session while open."""
    global _current
    address = scheduler or config.scheduler
    cluster = None
    # distributed logs its routine (worker start/stop, slow event loops) at INFO.
    chatty = logging.getLogger("distributed")
    level = chatty.level
    if not logger.isEnabledFor(logging.DEBUG):
        chatty.setLevel(logging.WARNING)
    try:
        if address:
            client = _connect(address, config.connect_timeout_s)
        else:
            cluster = _local_cluster(config)
            try:
                client = _connect(cluster.scheduler_address, config.connect_timeout_s)
            except BaseException:
                cluster.close()
                raise
            address = cluster.scheduler_address
        session = DaskSession(client, cluster, config, address)
        logger.info("dask engine: %s", session.describe())
        announce(session.dashboard_note())
        previous, _current = _current, session
        try:
            yield session
        finally:
            _current = previous
            session.close()
    finally:
        chatty.setLevel(level)


def current() -> DaskSession:
    """The open session (`open_session`); the Dask stages run on it."""
    if _current is None:
        raise DistributedError(
            "no Dask session is open: run the Dask engine through flows.training.run_training "
            "(engine='dask') or inside tasks.dask_engine.session.open_session"
        )
    return _current
