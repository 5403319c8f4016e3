"""The one seam between NumPy and CuPy.

Everything else in xpnet asks this module for its array module (``xp``) and never imports CuPy
itself. The choice is process-wide and made once, before a model is built::

    from xpnet import backend
    backend.use("cupy")          # or "numpy", the default
    x = backend.to_device(batch) # host array -> current backend

Mixing a NumPy and a CuPy array in one operation is an error (``get_array_module``), never a
silent copy.
"""

from __future__ import annotations

import numpy

BACKENDS = ("numpy", "cupy")

_current = numpy


class BackendError(RuntimeError):
    """The requested backend cannot be used here (no CuPy, no GPU, or mixed arrays)."""


def _import_cupy():
    try:
        import cupy
    except ImportError as e:
        raise BackendError(
            "the cupy backend needs CuPy and a CUDA GPU: install it with "
            "pip install 'xpnet[cuda12]' (or [cuda13]) on a machine with an NVIDIA driver"
        ) from e
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError when the driver is missing or broken
        raise BackendError(f"the cupy backend found no usable CUDA GPU ({e})") from e
    if n < 1:
        raise BackendError("the cupy backend found no CUDA GPU on this machine")
    return cupy


def use(name: str):
    """Select the backend by name ("numpy" or "cupy") and return its array module."""
    global _current
    if name == "numpy":
        _current = numpy
    elif name == "cupy":
        _current = _import_cupy()
    else:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return _current


def xp():
    """The array module of the current backend (numpy or cupy)."""
    return _current


def name() -> str:
    return "numpy" if _current is numpy else "cupy"


def is_cupy_array(a) -> bool:
    return type(a).__module__.startswith("cupy")


def get_array_module(*arrays):
    """The array module shared by ``arrays`` (None entries are ignored).

    Raises BackendError when NumPy and CuPy arrays are mixed: moving data between host and device
    must be explicit (``to_device`` / ``asnumpy``).
    """
    host = device = False
    for a in arrays:
        if type(a) is numpy.ndarray:  # the common case first: this runs in every kernel call
            host = True
        elif a is not None and is_cupy_array(a):
            device = True
    if host and device:
        raise BackendError(
            "mixed NumPy and CuPy arrays in one operation; move them explicitly with "
            "xpnet.backend.to_device() or xpnet.backend.asnumpy()"
        )
    if device:
        import cupy  # already imported by whoever made the array

        return cupy
    return numpy


def to_device(a, dtype=None):
    """Copy ``a`` (array-like, host or device) onto the current backend."""
    return _current.asarray(a, dtype=dtype)


def asnumpy(a):
    """Copy ``a`` to a host NumPy array (a no-op for NumPy arrays)."""
    if is_cupy_array(a):
        return a.get()
    return numpy.asarray(a)


def synchronize() -> None:
    """Wait for queued GPU work; benchmarks call this before reading the clock."""
    if _current is not numpy:
        _current.cuda.get_current_stream().synchronize()


def seed(n: int) -> None:
    """Seed the legacy global generators of both backends (for code outside xpnet's own RNGs)."""
    numpy.random.seed(n)
    if _current is not numpy:
        _current.random.seed(n)


def uniform(rng: numpy.random.Generator, shape, dtype=numpy.float32):
    """Uniform [0, 1) samples of ``shape`` on the current backend, drawn from the host ``rng``.

    The host generator is the only random state, so one seed and one ``rng.bit_generator.state``
    reproduce a run on either backend. On CuPy only a 64-bit seed crosses the bus.
    """
    if _current is numpy:
        return rng.random(shape, dtype=dtype)
    sub = _current.random.default_rng(int(rng.integers(2**63)))
    return sub.random(shape, dtype=dtype)
