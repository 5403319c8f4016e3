"""The fused conv3x3 + BatchNorm + ReLU [+ MaxPool2d(2, 2)] against the same four functions run
one after the other, against finite differences, and chunked against unchunked."""

import numpy
import pytest
from _support import assert_close, randn, spread

from xpnet import functional as F
from xpnet import backend
from xpnet.functional import fused, fused_device, parallel
from xpnet.functional.layout import nhwc
from xpnet.gradient_check import check_function

# (N, C, O, H, W, pool): fewer and more input than output channels, odd sizes
# (Winograd tiles that hang over the edge).
SHAPES = [
    (2, 1, 4, 6, 6, False),
    (3, 2, 3, 7, 7, True),
    (1, 9, 5, 3, 3, True),
    (2, 8, 6, 5, 4, False),
    (3, 10, 4, 7, 6, True),
]


def _unfused(x, w, gamma, beta, pool):
    z, conv_cache = F.conv2d_forward(x, w, None, 1, 1)
    a, bn_cache, mean, var = F.batchnorm_train_forward(z, gamma, beta)
    y, relu_cache = F.relu_forward(a)
    pool_cache = None
    if pool:
        y, pool_cache = F.maxpool2d_forward(y, 2, 2)

    def backward(dy):
        if pool:
            dy = F.maxpool2d_backward(dy, pool_cache)
        dy = F.relu_backward(dy, relu_cache)
        dz, dgamma, dbeta = F.batchnorm_backward(dy, bn_cache)
        dx, dw, _ = F.conv2d_backward(dz, conv_cache)
        return dx, dw, dgamma, dbeta

    return y, mean, var, backward


def _inputs(xp, rng, n, c, o, h, w, dtype=numpy.float64):
    x = spread(xp, rng, n, c, h, w, gap=0.01, dtype=dtype)
    wt = randn(xp, rng, o, c, 3, 3, dtype=dtype)
    gamma = randn(xp, rng, o, dtype=dtype) * 0.5 + 1.0
    beta = randn(xp, rng, o, dtype=dtype) * 0.5
    return x, wt, gamma, beta


@pytest.fixture(params=["whole", "one_image_chunks", "serial", "three_threads"])
def chunking(request, monkeypatch):
    """Run with the default chunk sizes and threads, with chunks of a single image, on one
    thread, and on three threads with single-image chunks (so some thread may get no chunk)."""
    if request.param in ("one_image_chunks", "three_threads"):
        monkeypatch.setattr(fused, "COL_CHUNK_BYTES", 1)
        monkeypatch.setattr(fused, "ELEMENTWISE_CHUNK_BYTES", 1)
    if request.param in ("serial", "three_threads"):
        previous = parallel.set_threads(1 if request.param == "serial" else 3)
        request.addfinalizer(lambda: parallel.set_threads(previous))
    return request.param


@pytest.fixture(params=["im2col", "winograd", "winograd4"])
def method(request, monkeypatch):
    """Run with each convolution algorithm, whatever the shape would choose (F(4x4, 3x3),
    "winograd4", runs on the CPU only; the device keeps its own choice)."""
    monkeypatch.setattr(fused, "CONV3X3_METHOD", request.param)
    return request.param


@pytest.mark.parametrize("shape", SHAPES)
def test_train_forward_and_backward_match_the_unfused_layers(xp, rng, chunking, method, compiled, shape):
    n, c, o, h, w, pool = shape
    x, wt, gamma, beta = _inputs(xp, rng, n, c, o, h, w)
    y, cache, mean, var = F.conv_bn_relu_train_forward(x, wt, gamma, beta, pool=pool, ws=F.Workspace())
    y_ref, mean_ref, var_ref, backward_ref = _unfused(x, wt, gamma, beta, pool)
    assert y.shape == y_ref.shape and y.dtype == x.dtype
    assert_close(y, y_ref, rtol=1e-10, atol=1e-12, what="y")
    assert_close(mean, mean_ref, rtol=1e-10, atol=1e-12, what="mean")
    assert_close(var, var_ref, rtol=1e-10, atol=1e-12, what="var")
    dy = randn(xp, rng, *y.shape, dtype=x.dtype)
    dx, dw, db, dgamma, dbeta = F.conv_bn_relu_backward(dy, cache, ws=F.Workspace())
    for got, ref, what in zip((dx, dw, dgamma, dbeta), backward_ref(dy), ("dx", "dw", "dgamma", "dbeta")):
        assert got.shape == ref.shape, what
        assert_close(got, ref, rtol=1e-9, atol=1e-11, what=what)
    assert_close(db, numpy.zeros(o), atol=1e-10, what="db (BatchNorm cancels the bias)")


@pytest.mark.parametrize("shape", SHAPES)
def test_float32_matches_float64(xp, rng, method, compiled, shape):
    n, c, o, h, w, pool = shape
    x, wt, gamma, beta = _inputs(xp, rng, n, c, o, h, w)
    y64, cache64, _, _ = F.conv_bn_relu_train_forward(x, wt, gamma, beta, pool=pool)
    dy = randn(xp, rng, *y64.shape, dtype=numpy.float64)
    grads64 = F.conv_bn_relu_backward(dy, cache64)
    f32 = [a.astype(numpy.float32) for a in (x, wt, gamma, beta)]
    y32, cache32, _, _ = F.conv_bn_relu_train_forward(*f32, pool=pool)
    grads32 = F.conv_bn_relu_backward(dy.astype(numpy.float32), cache32)
    assert y32.dtype == numpy.float32
    assert_close(y32, y64, rtol=1e-4, atol=1e-4, what="y")
    for got, ref, what in zip(grads32, grads64, ("dx", "dw", "db", "dgamma", "dbeta")):
        assert got.dtype == numpy.float32, what
        assert_close(got, ref, rtol=1e-3, atol=1e-3, what=what)


@pytest.mark.parametrize("shape", SHAPES)
def test_gradient_check(xp, rng, method, compiled, shape):
    n, c, o, h, w, pool = shape
    x, wt, gamma, beta = _inputs(xp, rng, n, c, o, h, w)

    def forward(x, wt, gamma, beta):
        return F.conv_bn_relu_train_forward(x, wt, gamma, beta, pool=pool)[0]

    def backward(dy, x, wt, gamma, beta):
        _, cache, _, _ = F.conv_bn_relu_train_forward(x, wt, gamma, beta, pool=pool)
        dx, dw, _, dgamma, dbeta = F.conv_bn_relu_backward(dy, cache)
        return dx, dw, dgamma, dbeta

    dy = randn(xp, rng, *forward(x, wt, gamma, beta).shape, dtype=numpy.float64)
    check_function(forward, backward, [x, wt, gamma, beta], dy, eps=1e-6, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_eval_forward_matches_the_unfused_layers(xp, rng, chunking, method, compiled, shape):
    n, c, o, h, w, pool = shape
    x, wt, gamma, beta = _inputs(xp, rng, n, c, o, h, w)
    b = randn(xp, rng, o, dtype=x.dtype)
    rm = randn(xp, rng, o, dtype=x.dtype)
    rv = xp.abs(randn(xp, rng, o, dtype=x.dtype)) + 0.5
    y = F.conv_bn_relu_eval_forward(x, wt, b, gamma, beta, rm, rv, pool=pool, ws=F.Workspace())
    z, _ = F.conv2d_forward(x, wt, b, 1, 1)
    ref, _ = F.relu_forward(F.batchnorm_eval_forward(z, gamma, beta, rm, rv))
    if pool:
        ref, _ = F.maxpool2d_forward(ref, 2, 2)
    assert_close(y, ref, rtol=1e-10, atol=1e-12)


def test_pool_ties_route_the_gradient_to_the_first_maximum(xp):
    # A constant image makes every window a four-way tie; PyTorch picks the first position.
    x = xp.ones((2, 1, 4, 4))
    wt = xp.zeros((1, 1, 3, 3))
    gamma, beta = xp.ones(1), xp.ones(1)
    y, cache, _, _ = F.conv_bn_relu_train_forward(x, wt, gamma, beta, pool=True)
    dy = xp.ones(y.shape)
    g = xp.empty((2, 4, 4, 1))
    free = xp.empty((2, 2, 2, 1), dtype=bool)
    hit = xp.empty_like(free)
    z, y, p, scale, shift = (cache[i] for i in (3, 4, 5, 8, 9))
    if y is None:  # a pooled block keeps no y: remade as its backward does
        y = z * scale + shift
    if xp is numpy:
        fused._relu_pool_grad_into(nhwc(dy), y, p, g, free, hit)
    else:  # the device routes it inside its kernels, by these masks
        masks = backend.fuse(fused_device._pool_masks)(*fused_device._windows(y))
        for window, mask in zip(fused_device._windows(g), masks):
            window[...] = mask
    expected = numpy.zeros((2, 4, 4, 1))
    expected[:, 0::2, 0::2] = 1.0
    assert_close(g, expected)


def test_a_shared_workspace_serves_several_shapes(xp, rng, method):
    ws = F.Workspace()
    for n, c, o, h, w, pool in SHAPES + SHAPES[::-1]:
        x, wt, gamma, beta = _inputs(xp, rng, n, c, o, h, w)
        y, cache, _, _ = F.conv_bn_relu_train_forward(x, wt, gamma, beta, pool=pool, ws=ws)
        y_ref, _, _, backward_ref = _unfused(x, wt, gamma, beta, pool)
        assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
        dy = randn(xp, rng, *y.shape, dtype=x.dtype)
        dx, *_ = F.conv_bn_relu_backward(dy, cache, ws=ws)
        assert_close(dx, backward_ref(dy)[0], rtol=1e-9, atol=1e-11)


def test_rejects_other_kernels(xp, rng):
    with pytest.raises(ValueError):
        F.conv_bn_relu_train_forward(xp.zeros((1, 2, 4, 4)), xp.zeros((3, 2, 1, 1)), xp.ones(3), xp.zeros(3))
    with pytest.raises(ValueError):
        F.conv_bn_relu_train_forward(xp.zeros((1, 2, 4, 4)), xp.zeros((3, 4, 3, 3)), xp.ones(3), xp.zeros(3))


def test_auto_method_uses_winograd_only_where_it_pays(compiled):
    from xpnet.functional.conv import Im2col3x3
    from xpnet.functional.winograd import Winograd3x3
    from xpnet.functional.winograd4 import Winograd4x4

    # F(4x4, 3x3) only with the compiled transforms: as NumPy passes they cost more than it saves.
    wide = Winograd4x4 if compiled == "jit" else Winograd3x3
    assert fused.conv3x3_method(28, 28, 64, 128) is wide
    assert fused.conv3x3_method(7, 7, 256, 256) is wide
    assert fused.conv3x3_method(14, 14, 32, 32) is wide
    assert fused.conv3x3_method(28, 28, 16, 32) is (Winograd4x4 if compiled == "jit" else Im2col3x3)
    assert fused.conv3x3_method(28, 28, 8, 32) is Im2col3x3
    assert fused.conv3x3_method(28, 28, 1, 64) is Im2col3x3  # one input channel: K = 1 GEMMs
    assert fused.conv3x3_method(3, 3, 256, 256) is Im2col3x3  # a 3x3 image: 4 tiles, 64% waste
