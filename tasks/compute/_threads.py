"""Thread-pool hygiene for the kernels.

* Our kernels run their own parallel loops (numba, OpenMP layer) and call BLAS on small
  tiles from inside them. If BLAS (OpenBLAS, threaded) also spread each call over its
  own threads, the two pools would oversubscribe the cores and spin against each other,
  so kernels run with BLAS limited to one thread.
* A parallel region costs a thread wake-up and a barrier (tens of microseconds when the
  machine is idle, up to a scheduler time slice - milliseconds - when other processes
  keep the cores busy). Small problems therefore run the same kernels on one thread.

The threadpoolctl controller is created lazily on first use (no import-time side
effect); numba's thread count is changed only inside the ``with`` block and restored.
"""

from __future__ import annotations

from contextlib import contextmanager

import numba

#: Below this many element operations a kernel call runs on one thread.
PARALLEL_MIN_WORK = 2_000_000

_controller = None


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
    """BLAS on one thread; numba on all its threads, or on one if ``work`` is small."""
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
