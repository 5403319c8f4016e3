"""A kernel's loop over chunks of images, split over threads on the CPU.

NumPy releases the GIL inside copies, ufuncs, einsum and BLAS calls on large arrays, so Python
threads that each take their own chunks of a batch keep every core busy through the
memory-bound passes (im2col, BatchNorm, ReLU, pooling) that one NumPy call runs on one core.
Inside such a region each BLAS call runs on its caller's thread alone, so the process never
runs more threads than ``threads()``.

Limiting BLAS needs ``threadpoolctl`` (a dependency of xpnet); without it, or with
``threads() == 1``, or on a GPU, the loop runs serially and BLAS keeps its own threads. Work is
split into contiguous runs of chunks, one run per thread, and every per-thread partial result is
combined in thread order, so a fixed thread count gives bit-identical results run after run.

The thread count is ``XPNET_THREADS`` (at most the machine's CPU count) or the number of CPUs this
process may use; ``set_threads(n)`` changes it.
"""

from __future__ import annotations

import contextvars
import os
from concurrent.futures import ThreadPoolExecutor

try:
    from threadpoolctl import ThreadpoolController
except ImportError:  # the core runs without it, serially
    ThreadpoolController = None

_threads = None
_executor = None
_controller = None


def _default_threads():
    env = os.environ.get("XPNET_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"XPNET_THREADS must be a positive integer, got {env!r}") from None
        if n < 1:
            raise ValueError(f"XPNET_THREADS must be a positive integer, got {env!r}")
        # More threads than CPUs only adds switching; a slip of the finger (100000) would spend
        # minutes starting threads and splitting every batch into slivers.
        most = max(os.cpu_count() or 1, cpu_count())
        if n > most:
            raise ValueError(f"XPNET_THREADS={n} exceeds the {most} CPUs of this machine")
        return n
    return cpu_count()


def cpu_count():
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def threads():
    """How many threads the CPU kernels split their chunk loops over."""
    global _threads
    if _threads is None:
        _threads = _default_threads() if ThreadpoolController is not None else 1
    return _threads


def set_threads(n=None):
    """Use ``n`` threads (``None``: the default) in the CPU kernels; returns the previous count."""
    global _threads, _executor
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    previous = threads()
    if n is not None and n > 1 and ThreadpoolController is None:
        n = 1
    _threads = n
    if _executor is not None:
        _executor.shutdown()
        _executor = None
    return previous


def workers(xp):
    """Threads a loop over arrays of module ``xp`` runs on (1 on a GPU)."""
    return threads() if xp.__name__ == "numpy" else 1


class _SerialBlas:
    """While active, BLAS runs on the calling thread only."""

    def __enter__(self):
        global _controller
        if _controller is None:
            _controller = ThreadpoolController()
        self._limiter = _controller.limit(limits=1, user_api="blas")
        return self

    def __exit__(self, *exc):
        self._limiter.restore_original_limits()


def split(n, nb, k):
    """The chunks [n0, n1) of ``range(n)`` of at most ``nb`` items, dealt out as ``k``
    contiguous runs of nearly equal length."""
    chunks = [(n0, min(n, n0 + nb)) for n0 in range(0, n, nb)]
    m = len(chunks)
    return [chunks[t * m // k : (t + 1) * m // k] for t in range(k)]


def for_chunks(xp, n, nb, body):
    """Call ``body(t, n0, n1)`` for every chunk of at most ``nb`` of ``n`` images, where ``t`` is
    the index of the thread that runs the chunk (``0 <= t < workers(xp)``; all of one thread's
    chunks come in order). Per-thread scratch and partial sums should be indexed by ``t``."""
    k = workers(xp)
    if k == 1 or n <= nb:
        for n0 in range(0, n, nb):
            body(0, n0, min(n, n0 + nb))
        return
    runs = split(n, nb, k)

    def work(t):
        for n0, n1 in runs[t]:
            body(t, n0, n1)

    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=k - 1, thread_name_prefix="xpnet")
    with _SerialBlas():
        # Each thread runs in a copy of the caller's context, so a caller's numpy.errstate (kept
        # in a context variable) holds in every chunk, not only in the caller's own.
        futures = [_executor.submit(contextvars.copy_context().run, work, t) for t in range(1, k)]
        try:
            work(0)
        finally:
            for f in futures:
                f.result()


def chunk_size(xp, n, per_image_bytes, target):
    """Images per chunk: chunks of at most about ``target`` bytes of buffer (one image if that is
    more), as few as that allows, and as many as the threads or a multiple of them, so that every
    thread gets the same share where the batch allows. On a GPU all ``n`` images, as chunking buys
    nothing there."""
    if xp.__name__ != "numpy" or n <= 1:
        return max(n, 1)
    k = workers(xp)
    wanted = -(-n * max(per_image_bytes, 1) // max(target, 1))
    chunks = min(n, k * -(-wanted // k))
    return -(-n // chunks)
