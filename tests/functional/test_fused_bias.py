"""The fused conv3x3 + bias [+ residual] + ReLU (``functional.fused_bias``) against the plain
functions run one after the other, against PyTorch, against finite differences, on every plan,
chunking and thread count, with and without the compiled loops."""

import numpy
import pytest
from _support import assert_close, randn, spread, torch_run

from xpnet import functional as F
from xpnet import nn
from xpnet.functional import fused, parallel
from xpnet.gradient_check import check_function

# (N, C, O, H, W, residual): one input channel (the first layer), more and fewer input than output
# channels, odd sizes (Winograd tiles that hang over the edge), a residual needs C == O.
SHAPES = [
    (2, 1, 4, 6, 6, False),
    (3, 5, 3, 7, 7, False),
    (2, 4, 4, 5, 9, True),
    (3, 6, 6, 7, 6, True),
]


def _inputs(xp, rng, n, c, o, h, w, residual, dtype=numpy.float64):
    x = spread(xp, rng, n, c, h, w, gap=0.01, dtype=dtype)
    wt = randn(xp, rng, o, c, 3, 3, dtype=dtype)
    b = randn(xp, rng, o, dtype=dtype)
    r = randn(xp, rng, n, o, h, w, dtype=dtype) if residual else None
    return x, wt, b, r


def _unfused(x, wt, b, r):
    z, conv_cache = F.conv2d_forward(x, wt, b, 1, 1)
    if r is not None:
        z = z + r
    y, relu_cache = F.relu_forward(z)

    def backward(dy):
        g = F.relu_backward(dy, relu_cache)
        dx, dw, db = F.conv2d_backward(g, conv_cache)
        return dx, dw, db, g

    return y, backward


@pytest.fixture(params=["whole", "one_image_chunks", "serial", "three_threads"])
def chunking(request, monkeypatch):
    """Default chunks and threads; one image per chunk; one thread; three threads on one-image
    chunks (so some thread may get no chunk)."""
    if request.param in ("one_image_chunks", "three_threads"):
        monkeypatch.setattr(fused, "COL_CHUNK_BYTES", 1)
    if request.param in ("serial", "three_threads"):
        previous = parallel.set_threads(1 if request.param == "serial" else 3)
        request.addfinalizer(lambda: parallel.set_threads(previous))
    return request.param


@pytest.fixture(params=["exact", "exact-winograd4", "im2col", "winograd", "winograd4"])
def method(request, monkeypatch):
    """The "exact" forward (im2col whatever the shape) with its backward on the plan the shape
    chooses or on F(4x4, 3x3), and "auto" forced to each CPU plan."""
    if request.param == "exact":
        return "exact"
    monkeypatch.setattr(fused, "CONV3X3_METHOD", request.param.replace("exact-", ""))
    return "exact" if request.param.startswith("exact") else "auto"


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_backward_match_the_plain_functions(xp, rng, chunking, method, compiled, shape):
    n, c, o, h, w, residual = shape
    x, wt, b, r = _inputs(xp, rng, n, c, o, h, w, residual)
    y, cache = F.conv_bias_relu_forward(x, wt, b, residual=r, ws=F.Workspace(), method=method)
    y_ref, backward_ref = _unfused(x, wt, b, r)
    assert y.shape == y_ref.shape and y.dtype == x.dtype
    assert float((y_ref > 0).mean()) > 0.2 and float((y_ref == 0).mean()) > 0.2  # the mask matters
    assert_close(y, y_ref, rtol=1e-10, atol=1e-12, what="y")
    dy = randn(xp, rng, *y.shape, dtype=x.dtype)
    got = F.conv_bias_relu_backward(dy, cache, ws=F.Workspace())
    for a, ref, what in zip(got, backward_ref(dy), ("dx", "dw", "db", "g")):
        assert a.shape == ref.shape and a.dtype == x.dtype, what
        assert_close(a, ref, rtol=1e-9, atol=1e-11, what=what)
    assert F.conv_bias_relu_backward(dy, cache, need_dx=False)[0] is None


@pytest.mark.parametrize("shape", SHAPES)
def test_gradient_check(xp, rng, method, compiled, shape):
    n, c, o, h, w, residual = shape
    x, wt, b, r = _inputs(xp, rng, n, c, o, h, w, residual)
    inputs = [x, wt, b] + ([r] if residual else [])

    def forward(x, wt, b, r=None):
        return F.conv_bias_relu_forward(x, wt, b, residual=r, method=method)[0]

    def backward(dy, x, wt, b, r=None):
        _, cache = F.conv_bias_relu_forward(x, wt, b, residual=r, method=method)
        dx, dw, db, g = F.conv_bias_relu_backward(dy, cache)
        return (dx, dw, db) + ((g,) if residual else ())

    dy = randn(xp, rng, *forward(*inputs).shape, dtype=numpy.float64)
    check_function(forward, backward, inputs, dy, eps=1e-6, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_pytorch(xp, rng, method, shape):
    torch = pytest.importorskip("torch")
    n, c, o, h, w, residual = shape
    x, wt, b, r = _inputs(xp, rng, n, c, o, h, w, residual)
    y, cache = F.conv_bias_relu_forward(x, wt, b, residual=r, method=method)
    dy = randn(xp, rng, *y.shape, dtype=numpy.float64)
    dx, dw, db, g = F.conv_bias_relu_backward(dy, cache)

    def reference(x, wt, b, r):
        z = torch.nn.functional.conv2d(x, wt, b, padding=1)
        return torch.relu(z if r is None else z + r)

    y_ref, (dx_ref, dw_ref, db_ref, dr_ref) = torch_run(reference, [x, wt, b, r], dy)
    assert_close(y, y_ref, rtol=1e-10, atol=1e-12, what="y")
    for a, ref, what in zip((dx, dw, db), (dx_ref, dw_ref, db_ref), ("dx", "dw", "db")):
        assert_close(a, ref, rtol=1e-9, atol=1e-11, what=what)
    if residual:
        assert_close(g, dr_ref, rtol=1e-12, atol=1e-12, what="residual")


@pytest.mark.parametrize("shape", SHAPES)
def test_float32_matches_float64(rng, method, compiled, shape):
    n, c, o, h, w, residual = shape
    inputs = _inputs(numpy, rng, n, c, o, h, w, residual)
    y64, cache64 = F.conv_bias_relu_forward(*inputs[:3], residual=inputs[3], method=method)
    dy = rng.standard_normal(y64.shape)
    f32 = [None if a is None else a.astype(numpy.float32) for a in inputs]
    y32, cache32 = F.conv_bias_relu_forward(*f32[:3], residual=f32[3], method=method)
    assert y32.dtype == numpy.float32
    assert_close(y32, y64, rtol=1e-4, atol=1e-4, what="y")
    grads32 = F.conv_bias_relu_backward(dy.astype(numpy.float32), cache32)
    for a, ref, what in zip(grads32, F.conv_bias_relu_backward(dy, cache64), ("dx", "dw", "db", "g")):
        assert a.dtype == numpy.float32, what
        assert_close(a, ref, rtol=1e-3, atol=1e-3, what=what)


def test_exact_method_keeps_a_flat_region_flat(monkeypatch):
    # A constant image convolves to one value at every interior pixel with im2col; the "share"
    # max-pool rule counts on those ties. The F(4x4, 3x3) plan's transforms round pixel by pixel.
    rng = numpy.random.default_rng(0)
    x = numpy.full((2, 16, 12, 12), 37.0, dtype=numpy.float32)
    wt = rng.standard_normal((16, 16, 3, 3)).astype(numpy.float32)
    b = rng.standard_normal(16).astype(numpy.float32)
    y, _ = F.conv_bias_relu_forward(x, wt, b, method="exact")
    inner = y[:, :, 1:-1, 1:-1]
    assert (inner == inner[:, :, :1, :1]).all()
    monkeypatch.setattr(fused, "CONV3X3_METHOD", "winograd4")
    y4, _ = F.conv_bias_relu_forward(x, wt, b, method="auto")
    assert_close(y4, y, rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError):
        nn.ConvReLU(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), method="winograd")


def test_rejects_other_kernels():
    with pytest.raises(ValueError):
        F.conv_bias_relu_forward(numpy.zeros((1, 2, 4, 4)), numpy.zeros((3, 2, 1, 1)), numpy.zeros(3))
    with pytest.raises(ValueError):
        F.conv_bias_relu_forward(numpy.zeros((1, 2, 4, 4)), numpy.zeros((3, 4, 3, 3)), numpy.zeros(3))
