"""Every function xpnet hands to ``cupy.fuse`` traces in the real CuPy (when it is installed).

CuPy traces a fused function in Python before it compiles and launches the kernel, and only the
launch needs a GPU. So with arrays that point at memory no one reads (an allocator that hands
out addresses and never touches them), tracing runs here: an unsupported operation, an
attribute a fusion proxy lacks, or a host read fails as it would on a GPU, while a traced
function gets as far as asking the driver for the device. Skipped where CuPy is not installed.
"""

import numpy
import pytest

from xpnet import backend
from xpnet.functional import fused, winograd
from xpnet.nn import layers
from xpnet import optim


@pytest.fixture
def cp(monkeypatch):
    cupy = pytest.importorskip("cupy")
    from xpnet.testing import fakecupy

    if isinstance(cupy, fakecupy.FakeCuPy):
        pytest.skip("only the fake device is importable as cupy here")
    memory = cupy.cuda.UnownedMemory(1 << 20, 1 << 40, None, device_id=0)
    offset = [0]

    def allocate(size):
        ptr = cupy.cuda.MemoryPointer(memory, offset[0])
        offset[0] += size + 512
        return ptr

    cupy.cuda.set_allocator(allocate)
    monkeypatch.setattr(backend, "_current", cupy)  # what use("cupy") selects on a GPU machine
    backend._fused.clear()
    yield cupy
    backend._fused.clear()
    cupy.cuda.set_allocator(cupy.get_default_memory_pool().malloc)


def _traces(cp, fn, *args):
    """True when ``cupy.fuse(fn)(*args)`` gets past tracing (to the device, or all the way)."""
    from cupy_backends.cuda.api.runtime import CUDARuntimeError

    try:
        backend.fuse(fn)(*args)
    except CUDARuntimeError:
        pass  # tracing is done: CuPy asked the driver for the device to launch on
    return True


def _arr(cp, *shape, dtype=numpy.float32):
    return cp.ndarray(shape, dtype=dtype)


def test_optimizer_updates_trace(cp):
    f = numpy.float32
    p, g, m, v = (_arr(cp, 8, 3) for _ in range(4))
    assert _traces(cp, optim._sgd, p, g, f(0.1), f(5e-4))
    assert _traces(cp, optim._sgd_momentum, p, g, m, f(0.1), f(5e-4), f(0.9))
    assert _traces(cp, optim._sgd_nesterov, p, g, m, f(0.1), f(5e-4), f(0.9))
    assert _traces(cp, optim._adam, p, g, m, v, *(f(x) for x in (1e-3, 0.9, 0.999, 0.1, 1e-3, 1.2, 1e-8, 0.0, 1.0)))


def test_batchnorm_and_pooling_steps_trace(cp):
    f = numpy.float32
    n, h, w, o = 2, 6, 6, 4
    vec = [_arr(cp, o) for _ in range(6)]
    assert _traces(cp, fused._bn_stats, vec[0], vec[1], vec[2], vec[3], f(72), f(1e-5))
    assert _traces(cp, fused._bn_backward_coefficients, *vec[:6], f(72))
    assert _traces(cp, fused._uncentered, *vec[:3], f(72))
    assert _traces(cp, layers._running_update, *vec[:4], f(0.9), f(0.1), f(0.11))
    z, y, g, dout = (_arr(cp, n, h, w, o) for _ in range(4))
    assert _traces(cp, fused._affine_relu, z, vec[0], vec[1])
    assert _traces(cp, fused._relu_grad, dout, y, g)
    assert _traces(cp, fused._max4, *fused._windows(y))
    p = _arr(cp, n, h // 2, w // 2, o)
    assert _traces(cp, fused._pool_relu_grad, p, p, *fused._windows(y), *fused._windows(g))
    rows = z.reshape(n * h * w, o)
    assert _traces(cp, fused._centered_sum, rows, vec[0])
    assert _traces(cp, fused._centered_square_sum, rows, vec[0])
    assert _traces(cp, fused._centered_dot, rows, rows, vec[0])
    assert _traces(cp, fused._bn_input_grad, rows, rows, vec[0], vec[1], vec[2])


def test_winograd_passes_and_dropout_hash_trace(cp):
    n, t, c = 2, 3, 4
    xpad = _arr(cp, n, 2 * t + 2, 2 * t + 2, c)
    cols = _arr(cp, 4, n, 2 * t + 2, t, c)
    src = [xpad[:, :, j : j + 2 * t : 2] for j in range(4)]
    assert _traces(cp, winograd._combination(winograd.BT), *src, *[cols[s] for s in range(4)])
    m = _arr(cp, 4, 4, n, t, t, c)
    s = _arr(cp, 2, 4, n, t, t, c)
    assert _traces(cp, winograd._combination(winograd.AT), *[m[r] for r in range(4)], s[0], s[1])
    assert _traces(cp, winograd._combination(winograd.A), m[0, 0], m[0, 1], *[m[1, k] for k in range(4)])
    tail = cols[0, :, 2:]
    assert _traces(cp, winograd._combination(((1, 1, -1, 0, 1),)), tail, *[cols[k, :, :-2] for k in range(4)], tail)
    assert _traces(cp, backend._splitmix_uniform, cp.ndarray((10,), dtype=numpy.uint64), numpy.uint64(7))
