"""xpnet.allocator: a step's freed arrays serve the next step instead of being faulted in again."""

import ctypes
import os
import subprocess
import sys
import textwrap

import pytest

from xpnet import allocator

# A step in miniature: forty 2 MiB arrays written, then all freed, five times to settle glibc's
# moving thresholds, then ten more times counting the page faults.
_STEPS = textwrap.dedent("""
    import resource, sys, numpy
    if sys.argv[1] == "keep":
        from xpnet import allocator
        print(allocator.keep_freed_memory())
    def step():
        arrays = [numpy.ones(1 << 19, numpy.float32) for _ in range(40)]
        del arrays
    for _ in range(5):
        step()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
""")


def _faults(mode, env=None):
    run = subprocess.run([sys.executable, "-c", _STEPS, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})})
    return run.stdout.split()


def _has_mallopt():
    try:
        return sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "mallopt")
    except OSError:
        return False


glibc = pytest.mark.skipif(not _has_mallopt(), reason="needs glibc's mallopt")


@glibc
def test_freed_memory_is_reused_rather_than_faulted_in_again():
    (default,) = _faults("default")
    kept, faults = _faults("keep")
    # 10 steps of 80 MiB are 200,000 pages of 4 KiB: glibc's defaults hand them back to the OS
    # and fault them in again (about 200,000 faults); kept, a step reuses the last one's memory.
    assert kept == "True"
    assert int(default) > 50_000
    assert int(faults) < 2_000


@glibc
def test_a_process_that_sets_glibcs_own_thresholds_is_left_alone():
    kept, faults = _faults("keep", {"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert kept == "False" and int(faults) > 50_000


def test_it_is_set_once_and_answers_alike(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "_done", None)
    monkeypatch.setattr(allocator, "_set", lambda: calls.append(1) or True)
    assert allocator.keep_freed_memory() and allocator.keep_freed_memory()
    assert calls == [1]


def test_outside_linux_nothing_is_touched(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator._set() is False
