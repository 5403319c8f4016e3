"""Compiled CPU loops, where Numba is installed: each a single pass over a chunk that NumPy would
make in several.

The contract is one function, ``kernel(name)``: the compiled loop of that name, or ``None`` when
there is none, in which case the caller runs its NumPy form. Compilation is lazy (on the first
call with a dtype) and cached on disk by Numba (``cache=True``), so a later run loads the
machine code instead of compiling it; ``warm_up`` compiles every kernel for one dtype and returns
the seconds it took (bench reports it apart). With an empty cache, ``compile_ahead`` starts a
helper process that compiles the loops from the end of a step back while this one compiles from
the start (see below).

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


def warm_up(dtype="float32", ahead=True):
    """Compile (or load from Numba's cache) every loop for ``dtype`` -> (seconds taken, how many
    loops were compiled rather than loaded from the cache, by this process or its helper);
    (0.0, 0) when off. With an empty cache a helper process compiles half of them (``ahead``)."""
    if not enabled():
        return 0.0, 0
    import numpy

    from xpnet.functional import _jit_loops

    t0 = time.perf_counter()
    helper = compile_ahead(_jit_loops.ALL_ORDER, dtype) if ahead else None
    try:
        _jit_loops.warm_up(numpy.dtype(dtype), _jit_loops.ALL_ORDER)
    finally:
        by_helper = helper.stop() if helper is not None else []
    seconds = time.perf_counter() - t0
    compiled = {f.__name__ for f in _jit_loops.LOOPS if _jit_loops.compiled(f.__name__)} | set(by_helper)
    return seconds, len(compiled)


# -- compiling ahead in a second process ---------------------------------------------------------
# Numba compiles one loop at a time per process (its compiler holds a process-wide lock), 0.2-1.3 s
# each: a first run with an empty cache spends some 7 s of a fast-preset run compiling the 11 loops
# a step calls, on one core. A helper process compiles them from the other end of the step (the
# optimizer's update first, then the backward loops) while this one goes on as before; Numba looks
# in its disk cache before compiling a signature it lacks, so each loop the helper has saved by
# the time the step reaches it is loaded, not compiled. The two meet in the middle, where the
# helper, finding a loop already saved, stops. It changes nothing but speed: whatever it has not
# saved this process compiles itself, as without it.

_HELPER = ("import sys; sys.path.insert(0, sys.argv[1]); "
           "from xpnet.functional import jit; jit._helper_main(sys.argv[2:])")


class Helper:
    """A running helper process (``compile_ahead``); ``stop()`` ends it if it still runs."""

    def __init__(self, process):
        self.process = process
        self.compiled = None  # the loops it compiled and saved, once stopped

    def stop(self, timeout=5.0):
        """End the helper (at once: a loop half compiled is simply not saved, as Numba writes
        each file whole) -> the names of the loops it compiled and saved."""
        import subprocess

        if self.compiled is None:
            p = self.process
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:  # a helper that will not end must not hold the run
                p.kill()
                p.wait()
            out = p.stdout.read().decode("ascii", "replace")  # all there: the writer has ended
            for f in (p.stdin, p.stdout):
                f.close()
            self.compiled = out.split()
        return self.compiled


def compile_ahead(names=None, dtype="float32"):
    """With an empty Numba cache, start a helper process that compiles the loops ``names`` (in
    the order a run first calls them; default: a ResNet-9 train step's) from the last one back
    -> a ``Helper``; None when the loops are off, the cache already holds them, or no process
    could be started.

    The last loop is compiled here first (or loaded, which tells that the cache is warm: then no
    helper starts and this costs nothing a run would not pay at its first loop anyway)."""
    if not enabled():
        return None
    import subprocess
    import sys
    from pathlib import Path

    from xpnet.functional import _jit_loops

    names = _jit_loops.STEP_ORDER if names is None else tuple(names)
    before = _jit_loops.compiled(names[-1])
    _jit_loops.warm_up(dtype, names[-1:])
    if _jit_loops.compiled(names[-1]) == before:  # loaded from the cache, or here already
        return None
    if not sys.executable:
        return None
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", _HELPER, root, str(dtype), *reversed(names[:-1])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        )
    except OSError:
        return None
    return Helper(process)


def _helper_main(argv):
    """The helper process: argv = (dtype, loop names in the order to compile them). Prints the
    name of each loop it compiled and saved; stops at the first it finds already saved (its
    parent got there), when its parent closes the pipe on its stdin, or dies."""
    import signal
    import sys
    import threading

    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C reaches the whole job: end quietly

    def orphaned():
        sys.stdin.buffer.read()  # returns at end of file: the parent closed the pipe or died
        os._exit(0)

    threading.Thread(target=orphaned, daemon=True).start()
    dtype, names, code = argv[0], argv[1:], 1
    try:
        from xpnet.functional import _jit_loops

        for name in names:
            before = _jit_loops.compiled(name)
            _jit_loops.warm_up(dtype, (name,))
            if _jit_loops.compiled(name) == before:
                break
            print(name, flush=True)
        code = 0
    finally:
        # Not a normal exit: the watcher thread still blocks on stdin, and Python's finalisation
        # aborts on a daemon thread that holds stdin's lock.
        os._exit(code)
