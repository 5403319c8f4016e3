"""The one seam between NumPy and CuPy.

Everything else in xpnet asks this module for its array module (``xp``) and never imports CuPy
itself. The choice is process-wide and made once, before a model is built::

    from xpnet import backend
    backend.use("cupy")          # or "numpy", the default
    x = backend.to_device(batch) # host array -> current backend

Mixing a NumPy and a CuPy array in one operation is an error (``get_array_module``), never a
silent copy. What only a GPU needs lives here too: ``fuse`` (an elementwise function as one
kernel), the memory pool, and the out-of-memory error (``device_errors``).
"""

from __future__ import annotations

import contextlib
import math

import numpy

from xpnet.errors import XpnetError

BACKENDS = ("numpy", "cupy")

_current = numpy
_fused = {}  # function -> its cupy.fuse form for the current backend, made on first use
_local_rank = 0  # this process's rank among those on its machine (MPI): it uses GPU local_rank % count


class BackendError(XpnetError, RuntimeError):
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
    _fused.clear()
    if name == "numpy":
        _current = numpy
    elif name == "cupy":
        _current = _import_cupy()
        _use_local_gpu()
    else:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return _current


@contextlib.contextmanager
def using(name: str):
    """Select the backend ``name`` for a ``with`` block (yielding its array module) and give back
    the one selected before, however the block ends."""
    global _current
    previous = _current
    try:
        yield use(name)
    finally:
        _fused.clear()
        _current = previous


def bind_local_rank(local_rank: int) -> None:
    """Under MPI: this process is the ``local_rank``-th on its machine, so on CuPy it uses GPU
    ``local_rank % device count`` (now, or when the cupy backend is chosen)."""
    global _local_rank
    _local_rank = int(local_rank)
    if _current is not numpy:
        _use_local_gpu()


def _use_local_gpu():
    _current.cuda.Device(_local_rank % _current.cuda.runtime.getDeviceCount()).use()


def gpu_index() -> int:
    """The GPU this process uses (0 on NumPy)."""
    return 0 if _current is numpy else int(_current.cuda.runtime.getDevice())


def nccl_available() -> bool:
    """Whether device arrays can be summed across processes by NCCL here (CuPy finds NCCL's
    library: ``pip install nvidia-nccl-cu12``)."""
    return _current is not numpy and bool(getattr(_current.cuda.nccl, "available", False))


def nccl_allreduce(size: int, rank: int, bcast):
    """A function that sums a contiguous float device array in place over ``size`` processes
    through NCCL, this one being ``rank``; NCCL's unique id goes from rank 0 to the others by
    ``bcast`` (the MPI broadcast). Every rank must call this together."""
    nccl = _current.cuda.nccl
    comm = nccl.NcclCommunicator(size, bcast(nccl.get_unique_id() if rank == 0 else None), rank)
    types = {numpy.dtype(numpy.float32): nccl.NCCL_FLOAT32, numpy.dtype(numpy.float64): nccl.NCCL_FLOAT64}

    def allreduce_(a):
        ptr = a.data.ptr
        comm.allReduce(ptr, ptr, a.size, types[a.dtype], nccl.NCCL_SUM, _current.cuda.get_current_stream().ptr)

    return allreduce_


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


def memory_pool_bytes() -> int:
    """Bytes the device memory pool holds (0 on NumPy): what a CuPy run takes from the GPU."""
    if _current is numpy:
        return 0
    return int(_current.get_default_memory_pool().total_bytes())


@contextlib.contextmanager
def device_errors():
    """Report the device running out of memory as a one-line BackendError, after handing the
    pool's cached blocks back to the driver; other errors pass through unchanged."""
    try:
        yield
    except MemoryError as e:
        if _current is numpy or not isinstance(e, _current.cuda.memory.OutOfMemoryError):
            raise
        _current.get_default_memory_pool().free_all_blocks()
        raise BackendError(
            f"the GPU ran out of memory ({' '.join(str(e).split())}); use a smaller batch size "
            f"(--batch-size, --eval-batch-size) or a narrower net (--width)"
        ) from None


# SplitMix64's constants: the golden-ratio increment and the two multipliers of its finaliser.
_SPLITMIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def _splitmix_uniform(i, seed):
    """i: uint64 counters, seed: uint64 scalar -> float32 in [0, 1): the top 24 bits of
    SplitMix64's output for state ``seed + (i + 1) * golden``. Elementwise only, so ``cupy.fuse``
    makes it one kernel."""
    z = seed + (i + numpy.uint64(1)) * numpy.uint64(_SPLITMIX[0])
    z = (z ^ (z >> numpy.uint64(30))) * numpy.uint64(_SPLITMIX[1])
    z = (z ^ (z >> numpy.uint64(27))) * numpy.uint64(_SPLITMIX[2])
    z = z ^ (z >> numpy.uint64(31))
    return (z >> numpy.uint64(40)).astype(numpy.float32) * numpy.float32(2.0**-24)


def draw_seed(rng: numpy.random.Generator):
    """The 64-bit seed ``uniform`` draws from ``rng`` for one call on CuPy."""
    return numpy.uint64(int(rng.integers(2**63)))


def uniform(rng: numpy.random.Generator, shape, dtype=numpy.float32, seed=None):
    """Uniform [0, 1) samples of ``shape`` on the current backend, drawn from the host ``rng``.

    The host generator is the only random state, so one seed and one ``rng.bit_generator.state``
    reproduce a run on either backend. On CuPy only a 64-bit seed crosses, as a kernel argument:
    the samples are a counter-based hash of their index and that seed, two launches (an arange
    and one fused kernel), where a ``cupy.random`` generator per call would also set up cuRAND
    states with a kernel of their own. ``seed``: on CuPy, a 0-d uint64 device array holding the
    seed to use instead of drawing one (a CUDA graph's, loaded before each replay with
    ``draw_seed``, so the graph's masks are the ones an eager run draws).
    """
    if _current is numpy:
        return rng.random(shape, dtype=dtype)
    if seed is None:
        seed = draw_seed(rng)
    n = math.prod(shape)
    u = fuse(_splitmix_uniform)(_current.arange(n, dtype=numpy.uint64), seed)
    return u.reshape(shape).astype(dtype, copy=False)


def fuse(fn):
    """``fn`` as one kernel on CuPy (``cupy.fuse``, compiled once per function), ``fn`` itself on
    NumPy.

    ``fn`` takes arrays of one shape (or broadcastable) and scalars, and uses only what
    ``cupy.fuse`` can fuse: ufuncs and operators, ``where``, ``astype`` and whole-axis reductions.
    It may return arrays, or write into its array arguments with in-place operators or a ufunc's
    positional output. Pass scalars as NumPy scalars of the arrays' dtype, so that no bare Python
    number decides a fused kernel's types.
    """
    if _current is numpy:
        return fn
    f = _fused.get(fn)
    if f is None:
        f = _fused[fn] = _current.fuse(fn)
    return f
