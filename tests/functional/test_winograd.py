"""Winograd F(2x2, 3x3): each transform against its definition, each adjoint against its forward
(<A x, y> = <x, A^T y>), and the whole convolution and its gradients against im2col + GEMM."""

import numpy
import pytest
from _support import assert_close, randn, run_plan

from xpnet import functional as F
from xpnet.backend import asnumpy
from xpnet.functional import winograd as W
from xpnet.functional.conv import Im2col3x3
from xpnet.functional.layout import nchw, nhwc

# (N, H, W, C, O): even and odd sizes, a single tile, more input than output channels and fewer.
SHAPES = [(2, 4, 4, 3, 5), (1, 5, 7, 4, 2), (3, 2, 3, 2, 3), (2, 7, 6, 5, 4), (1, 1, 1, 2, 2)]


def _plan(xp, n, h, w, c, o, nb=None, dtype=numpy.float64):
    return W.Winograd3x3(h, w, c, o, nb or n, F.Workspace(), dtype)


def _direct(x, w):
    """x (N, H, W, C), w (O, C, 3, 3) -> (N, H, W, O) by the general im2col convolution."""
    y, _ = F.conv2d_forward(nchw(x), w, None, 1, 1)
    return nhwc(y)


def test_kernel_transform_is_g_w_gt(xp, rng):
    w = randn(xp, rng, 3, 2, 3, 3, dtype=numpy.float64)
    g = numpy.array(W.G)
    expected = numpy.einsum("ai,ocij,bj->aboc", g, asnumpy(w), g)
    assert_close(W.weight_transform(w), expected.reshape(16, 3, 2), rtol=1e-12, atol=1e-12)


def test_kernel_transform_adjoint(xp, rng):
    w = randn(xp, rng, 4, 3, 3, 3, dtype=numpy.float64)
    du = randn(xp, rng, 16, 4, 3, dtype=numpy.float64)
    lhs = float((W.weight_transform(w) * du).sum())
    rhs = float((w * W.weight_transform_adjoint(du)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_input_and_output_transforms_match_their_definitions(xp, rng, shape):
    n, h, w, c, o = shape
    th, tw = W.tiles(h, w)
    x = randn(xp, rng, n, h, w, c, dtype=numpy.float64)
    xpad = xp.zeros((n, 2 * th + 2, 2 * tw + 2, c))
    u = xp.empty((4, 4, n, th, tw, c))
    W.input_transform_into(x, 0, n, xpad, xp.empty((4, n, 2 * th + 2, tw, c)), u)
    bt = numpy.array(W.BT, dtype=numpy.float64)
    xh = numpy.zeros((n, 2 * th + 2, 2 * tw + 2, c))
    xh[:, 1 : h + 1, 1 : w + 1] = asnumpy(x)
    for i in range(th):
        for j in range(tw):
            d = xh[:, 2 * i : 2 * i + 4, 2 * j : 2 * j + 4]  # (n, 4, 4, c)
            assert_close(u[:, :, :, i, j], numpy.einsum("ra,nabc,sb->rsnc", bt, d, bt), rtol=1e-12, atol=1e-12)

    m = randn(xp, rng, 4, 4, n, th, tw, o, dtype=numpy.float64)
    out = xp.empty((n, h, w, o))
    W.output_transform_into(m, out, xp.empty((2, 4, n, th, tw, o)))
    at = numpy.array(W.AT, dtype=numpy.float64)
    full = numpy.einsum("ar,rsnijo,bs->niajbo", at, asnumpy(m), at).reshape(n, 2 * th, 2 * tw, o)
    assert_close(out, full[:, :h, :w], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_input_transform_adjoint(xp, rng, shape):
    n, h, w, c, o = shape
    th, tw = W.tiles(h, w)
    x = randn(xp, rng, n, h, w, c, dtype=numpy.float64)
    du = randn(xp, rng, 4, 4, n, th, tw, c, dtype=numpy.float64)
    u = xp.empty((4, 4, n, th, tw, c))
    W.input_transform_into(x, 0, n, xp.zeros((n, 2 * th + 2, 2 * tw + 2, c)), xp.empty((4, n, 2 * th + 2, tw, c)), u)
    dx = xp.full((n, h, w, c), numpy.nan)  # every entry must be written
    dxpad = xp.full((n, 2 * th + 2, 2 * tw + 2, c), numpy.nan)  # scratch: overwritten whole
    W.input_transform_adjoint_into(du, xp.full((4, n, 2 * th + 2, tw, c), numpy.nan), dxpad, dx)
    assert float((u * du).sum()) == pytest.approx(float((x * dx).sum()), rel=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_output_transform_adjoint(xp, rng, shape):
    n, h, w, c, o = shape
    th, tw = W.tiles(h, w)
    m = randn(xp, rng, 4, 4, n, th, tw, o, dtype=numpy.float64)
    dy = randn(xp, rng, n, h, w, o, dtype=numpy.float64)
    y = xp.empty((n, h, w, o))
    W.output_transform_into(m, y, xp.empty((2, 4, n, th, tw, o)))
    v = xp.empty((4, 4, n, th, tw, o))
    W.output_transform_adjoint_into(dy, xp.zeros((n, 2 * th, 2 * tw, o)), xp.empty((4, n, 2 * th, tw, o)), v)
    assert float((y * dy).sum()) == pytest.approx(float((m * v).sum()), rel=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nb", [1, 2])
def test_plan_matches_im2col(xp, rng, shape, nb, compiled):
    """Forward, weight gradient and input gradient, chunk by chunk, against the im2col plan (on
    the CPU with the compiled transforms and with NumPy's passes)."""
    n, h, w, c, o = shape
    x = randn(xp, rng, n, h, w, c, dtype=numpy.float64)
    wt = randn(xp, rng, o, c, 3, 3, dtype=numpy.float64)
    dz = randn(xp, rng, n, h, w, o, dtype=numpy.float64)
    plans = [_plan(xp, n, h, w, c, o, nb)]
    plans += [Im2col3x3(h, w, c, o, nb, F.Workspace(), numpy.float64, tap_major=tm) for tm in (True, False)]
    results = [run_plan(xp, plan, x, wt, dz, nb) for plan in plans]
    assert_close(results[0][0], _direct(x, wt), rtol=1e-10, atol=1e-12, what="y vs the general conv")
    for other in results[1:]:  # Winograd against im2col's two column orders
        for got, ref, what in zip(results[0], other, ("y", "dw", "dx")):
            assert got.shape == ref.shape, what
            assert_close(got, ref, rtol=1e-10, atol=1e-12, what=what)
