"""Compiled CPU loops, where Numba is installed: each a single pass over a chunk that NumPy would
make in several.

The contract is one function, ``kernel(name)``: the compiled loop of that name, or ``None`` when
there is none, in which case the caller runs its NumPy form. Compilation is lazy (on the first
call with a dtype) and cached on disk by Numba (``cache=True``), so a later run loads the
machine code instead of compiling it; ``warm_up`` compiles every kernel for one dtype and returns
the seconds it took (bench reports it apart).

The loops are written over the channels-last layout, channels innermost, so LLVM vectorises the
channel loop and every load and store is a contiguous run. They are plain serial ``njit``
functions with ``nogil``: the kernels' own chunk loop (``parallel.for_chunks``) already spreads
chunks over threads, and a Numba thread pool inside each chunk would fight it. (Numba's
``vectorize`` ufuncs with NumPy broadcasting measured 3x slower than NumPy's own passes on a
BatchNorm affine + ReLU: explicit loops, not ufuncs.)

``XPNET_JIT=0`` turns the compiled loops off (``set_enabled`` too, for tests); the results are
the same up to rounding either way, and the tests run both.
"""

from __future__ import annotations

import os
import time

try:  # optional: the NumPy forms run without it
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

_enabled = None
_kernels = {}


def available():
    """Whether Numba can be imported here at all."""
    return numba is not None


def enabled():
    """Whether the compiled loops are used: Numba importable and ``XPNET_JIT`` not "0"."""
    global _enabled
    if _enabled is None:
        _enabled = available() and os.environ.get("XPNET_JIT", "1").strip() not in ("0", "false", "no", "off")
    return _enabled


def set_enabled(on=None):
    """Use the compiled loops (if Numba is there) or not; ``None``: as ``XPNET_JIT`` says.
    Returns the previous setting."""
    global _enabled
    previous = enabled()
    _enabled = None if on is None else bool(on) and available()
    return previous


def describe():
    """One line for bench and reports: which path runs."""
    if not available():
        return "NumPy passes (numba not installed)"
    if not enabled():
        return f"NumPy passes (numba {numba.__version__} off: XPNET_JIT=0)"
    return f"numba {numba.__version__} compiled loops"


def kernel(name):
    """The compiled loop ``name`` of this module's ``_LOOPS``, or None (not enabled)."""
    if not enabled():
        return None
    k = _kernels.get(name)
    if k is None:
        from xpnet.functional import _jit_loops  # imports numba and defines the loops

        k = _kernels[name] = getattr(_jit_loops, name)
    return k


def warm_up(dtype="float32"):
    """Compile (or load from Numba's cache) every loop for ``dtype`` -> (seconds taken, how many
    loops were compiled rather than loaded from the cache); (0.0, 0) when off."""
    if not enabled():
        return 0.0, 0
    import numpy

    from xpnet.functional import _jit_loops

    t0 = time.perf_counter()
    _jit_loops.warm_up(numpy.dtype(dtype))
    seconds = time.perf_counter() - t0
    compiled = sum(sum(f.stats.cache_misses.values()) for f in _jit_loops.LOOPS)
    return seconds, compiled
