"""Workspace: one memory per name across shapes, persistent zeroed buffers per shape."""

import numpy

from xpnet.functional import Workspace


def test_a_name_shares_its_memory_across_shapes(xp):
    ws = Workspace()
    big = ws.get(xp, "a", (4, 5), numpy.float32)
    small = ws.get(xp, "a", (2, 3), numpy.float32)
    assert small.shape == (2, 3) and small.dtype == numpy.float32
    small[...] = 7.0
    assert float(big.reshape(-1)[:6].sum()) == 42.0  # the same memory
    assert ws.nbytes == 4 * 5 * 4
    larger = ws.get(xp, "a", (6, 6), numpy.float32)  # grows
    assert larger.shape == (6, 6) and ws.nbytes == 36 * 4
    assert ws.get(xp, "b", (2, 3), numpy.float32) is not None and ws.nbytes == 42 * 4
    assert ws.get(xp, "a", (2, 3), numpy.float64).dtype == numpy.float64  # dtypes kept apart


def test_zeroed_buffers_persist_per_shape(xp):
    ws = Workspace()
    a = ws.get(xp, "pad", (3, 3), numpy.float32, zero=True)
    assert float(abs(a).sum()) == 0.0
    a[1, 1] = 5.0
    assert ws.get(xp, "pad", (3, 3), numpy.float32, zero=True) is a  # same array, contents kept
    b = ws.get(xp, "pad", (4, 4), numpy.float32, zero=True)
    assert float(abs(b).sum()) == 0.0 and float(a[1, 1]) == 5.0
