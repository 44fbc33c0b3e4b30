"""Thread-pool hygiene for the kernels.

Our kernels run their own parallel loops (numba, OpenMP layer) and call BLAS on small
tiles from inside them. If BLAS (OpenBLAS, threaded) also spreads each call over its
own threads, the two pools oversubscribe the cores and spin against each other. The
public wrappers therefore run kernels with BLAS limited to one thread. The
threadpoolctl controller is created lazily on first use (no import-time side effect).
"""

from __future__ import annotations

from contextlib import contextmanager

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
