"""Keep the memory a training step frees for the next step, rather than handing it back to the OS.

A CPU train step allocates and frees the same few dozen arrays every step (activations, their
gradients, Winograd tiles), most of them between 128 KiB and a few MiB at the narrow widths.
glibc's malloc serves blocks above its mmap threshold with fresh ``mmap`` calls and gives the
top of its heaps back to the OS above its trim threshold; both thresholds move with what was
freed before, so whether a step reuses memory or faults its arrays in page by page again depends
on the history of the heap. Measured on a 2-core Intel Xeon with ``benchmarks/tools/ab.py . '.@{"allocator":
true}' --configs 0.25:128 1:64`` (train steps in fresh processes, without and with this), in two
runs: 1.14x and 1.29x the images/s at width 0.25, batch 128, and 1.34x and 1.01x at width 1.0,
batch 64 (whether the defaults fault depends on the heap's history, so the gain comes and goes);
the fast preset's seed 0 took 61.3 s with 12 s of system time without it (``xpnet train --preset
fast --epochs 1.3 --crop 24 --augment 0`` at commit f396cf4) and 51.8 s with 1.8 s with it, with
the same weights. ``keep_freed_memory`` fixes them: blocks up to 32 MiB (the
largest mmap threshold glibc accepts on 64-bit machines) come from the heap, and freed memory
stays with the process. The process's peak memory is unchanged; it is only not returned early.

The command line calls it once at start; a library user may call it too. It does nothing outside
glibc (macOS, musl, Windows) and leaves alone a process whose environment already sets glibc's
own ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_``.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt's parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30

_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_done = None


def keep_freed_memory() -> bool:
    """Fix glibc's malloc thresholds for this process (once) -> whether they are set."""
    global _done
    if _done is None:
        _done = _set()
    return _done


def _set() -> bool:
    if not sys.platform.startswith("linux") or any(name in os.environ for name in _ENV):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no mallopt: not glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; a refused value leaves glibc's default in place.
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) & bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
