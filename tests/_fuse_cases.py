"""Small fused functions that CuPy's ordinary fusion refuses (``REFUSED``) or traces, shared by
the fake device's tests and the real-CuPy compile check, which shows that each refused one does
send real CuPy to its experimental ``new_fusion``. Each takes the array module from the seam."""

import numpy

from xpnet import backend


def centered_sum(x, a):
    return backend.xp().sum(x - a, axis=0)


def after_reduction(x, a):
    xp = backend.xp()
    s = xp.sum(x - a, axis=0)
    return xp.sqrt(s * s + x.dtype.type(1))


def sum_method(x, a):
    return (x - a).sum(axis=0)


def two_reductions(x, a):
    xp = backend.xp()
    return xp.sum(x, axis=0), xp.sum(x * x, axis=0)


def before_and_after(x, a):
    return backend.xp().sum(x, axis=0) * x


def keepdims(x, a):
    return backend.xp().sum(x - a, axis=0, keepdims=True)


def shape(x, a):
    return x * x.shape[0]


def keyword(x, a):
    return backend.xp().add(x, a, dtype=numpy.float32)


def reflected_power(x, a):
    return numpy.float32(2) ** x


def mean(x, a):
    return backend.xp().mean(x - a, axis=0)


def indexing(x, a):
    return x[0] + a


def _matrix_and_row(xp):
    x = xp.ndarray((4, 3), dtype=numpy.float32)  # no kernel: real CuPy may have no device here
    return x, x[0]


REFUSED = [
    (f, _matrix_and_row)
    for f in (sum_method, two_reductions, before_and_after, keepdims, shape, keyword, reflected_power, mean, indexing)
]
REFUSED.append((lambda x, a: x + a, _matrix_and_row))  # no C identifier for the kernel's name
