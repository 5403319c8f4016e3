"""The compiled BatchNorm loops (``functional._jit_loops``) against NumPy, where their rows of
few channels are folded into wide rows (several row counts, so the fold takes every divisor)
and where an array in Fortran order (a channels-last view of channels-first memory) cannot be
folded."""

import numpy
import pytest

from xpnet.functional import jit

pytestmark = pytest.mark.skipif(not jit.available(), reason="numba is not installed")


def _rows(rng, r, c, dtype=numpy.float64):
    return rng.standard_normal((r, c)).astype(dtype)


@pytest.mark.parametrize("r", [1, 7, 12, 50, 64, 200])
@pytest.mark.parametrize("c", [1, 3, 16, 64])
@pytest.mark.parametrize("fortran", [False, True])
def test_bn_row_loops_match_numpy(r, c, fortran):
    from xpnet.functional import _jit_loops as L

    rng = numpy.random.default_rng(r * 100 + c)
    z, dout, y = (_rows(rng, r, c) for _ in range(3))
    mean, scale, shift = (rng.standard_normal(c) for _ in range(3))
    if fortran:
        z, dout, y = (numpy.asfortranarray(a) for a in (z, dout, y))

    out = numpy.empty((3, c))
    L.bn_centered_sums(z, out)
    a = z.mean(axis=0)
    numpy.testing.assert_allclose(out[0], a, rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(out[1], (z - a).sum(axis=0), atol=1e-10)
    numpy.testing.assert_allclose(out[2], ((z - a) ** 2).sum(axis=0), rtol=1e-12)

    relu = numpy.empty((r, c))
    L.bn_affine_relu(z, scale, shift, relu)
    numpy.testing.assert_allclose(relu, numpy.maximum(z * scale + shift, 0.0), rtol=1e-15)

    g, sums = numpy.empty((r, c)), numpy.zeros((2, c))
    L.bn_relu_grad_sums(dout, y, z, mean, g, sums)
    expect = numpy.where(y > 0, dout, 0.0)
    numpy.testing.assert_array_equal(g, expect)
    numpy.testing.assert_allclose(sums[0], expect.sum(axis=0), atol=1e-12)
    numpy.testing.assert_allclose(sums[1], (expect * (z - mean)).sum(axis=0), atol=1e-12)

    dz, total = g.copy(), numpy.zeros(c)
    L.bn_input_grad(dz, z, scale, shift, mean, total)
    numpy.testing.assert_allclose(dz, g * scale + z * shift + mean, rtol=1e-14, atol=1e-14)
    numpy.testing.assert_allclose(total, dz.sum(axis=0), atol=1e-12)
