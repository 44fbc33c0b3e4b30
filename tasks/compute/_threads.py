"""Threads for the kernels: how work is split, and thread-pool hygiene.

* The kernels are plain (serial, ``nogil``) numba functions that take one *part* of the
  work: ``kernel(part, n_parts, *args)`` handles the part-th of ``n_parts`` contiguous
  shares of its chunks (:func:`share`). :func:`run_parts` runs the parts on a small
  thread pool (the calling thread takes part 0) and waits. Compiling a serial kernel
  costs about a third of what a ``parallel=True`` (parfor) kernel costs, which is most
  of a fresh install's first run; the parts split the work as numba's static
  ``prange`` schedule did, and the chunking depends only on the data size, so results
  do not depend on the number of threads.
* Kernels call BLAS on small tiles from inside their parts. If BLAS (OpenBLAS,
  threaded) also spread each call over its own threads, the two would oversubscribe
  the cores and spin against each other, so kernels run with BLAS limited to one thread.
* Starting parts costs a thread wake-up and a wait (tens of microseconds when the
  machine is idle, up to a scheduler time slice - milliseconds - when other processes
  keep the cores busy). Small problems therefore run in the calling thread alone.

The thread count is numba's (``numba.get_num_threads()``, thread-local, so callers such
as Dask tasks set it with ``numba.set_num_threads``). The pool and the threadpoolctl
controller are created lazily on first use (no import-time side effect).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numba
from numba import njit

#: Below this many element operations a kernel call runs on one thread.
PARALLEL_MIN_WORK = 2_000_000

_controller = None
_pool = None
_pool_pid = None
_pool_lock = threading.Lock()


@contextmanager
def blas_single_thread():
    """Limit BLAS libraries to one thread inside the block (restored afterwards)."""
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    with _controller.limit(limits=1, user_api="blas"):
        yield


@contextmanager
def kernel_threads(work: float):
    """BLAS on one thread; the kernels on all of numba's threads, or on one if ``work`` is
    small."""
    with blas_single_thread():
        if work >= PARALLEL_MIN_WORK or numba.get_num_threads() == 1:
            yield
            return
        previous = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            yield
        finally:
            numba.set_num_threads(previous)


def parts_for(n_items: int) -> int:
    """How many parts :func:`run_parts` should split ``n_items`` chunks into: one per
    thread, never more than there are chunks."""
    return max(1, min(numba.get_num_threads(), int(n_items)))


def _executor() -> ThreadPoolExecutor:
    global _pool, _pool_pid
    with _pool_lock:
        # a forked child inherits the pool object but not its threads: it gets its own
        if _pool is None or _pool_pid != os.getpid():
            workers = max(1, numba.config.NUMBA_NUM_THREADS - 1)
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="popseg-kernel")
            _pool_pid = os.getpid()
    return _pool


def run_parts(kernel, n_parts: int, *args) -> None:
    """``kernel(part, n_parts, *args)`` for every part in ``range(n_parts)``, in parallel
    (the calling thread runs part 0); returns when all are done, raising the first
    error. The kernel must release the GIL (``nogil=True``) and write its results into
    arrays among ``args``, each part to its own slots."""
    if n_parts <= 1:
        kernel(0, 1, *args)
        return
    pool = _executor()
    futures = [pool.submit(kernel, p, n_parts, *args) for p in range(1, n_parts)]
    error = None
    try:
        kernel(0, n_parts, *args)
    except BaseException as exc:  # the other parts still write into the caller's arrays
        error = exc
    for f in futures:
        exc = f.exception()
        if exc is not None and error is None:
            error = exc
    if error is not None:
        raise error


@njit(cache=True, nogil=True)
def share(part, n_parts, n_items):  # pragma: no cover
    """The contiguous range ``(lo, hi)`` of ``n_items`` that part ``part`` of ``n_parts``
    takes (as numba's static ``prange`` schedule splits a loop)."""
    return (n_items * part) // n_parts, (n_items * (part + 1)) // n_parts
