import numpy
import pytest
from _support import CASES, assert_close, randn, torch_run
from hypothesis import given
from hypothesis import strategies as st

from xpnet import functional as F
from xpnet.functional.conv import output_size
from xpnet.gradient_check import GradientCheckError, check_function

torch = pytest.importorskip("torch")


@st.composite
def conv_cases(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    h = draw(st.integers(dilation[0] * (kh - 1) + 1, 9))
    w = draw(st.integers(dilation[1] * (kw - 1) + 1, 9))
    return dict(
        n=draw(st.integers(1, 3)),
        c=draw(st.integers(1, 4)),
        o=draw(st.integers(1, 5)),
        hw=(h, w),
        k=(kh, kw),
        stride=stride,
        padding=padding,
        dilation=dilation,
        bias=draw(st.booleans()),
    )


def _arrays(xp, rng, case, dtype=numpy.float32):
    x = randn(xp, rng, case["n"], case["c"], *case["hw"], dtype=dtype)
    w = randn(xp, rng, case["o"], case["c"], *case["k"], dtype=dtype)
    b = randn(xp, rng, case["o"], dtype=dtype) if case["bias"] else None
    return x, w, b


def _geom(case):
    return case["stride"], case["padding"], case["dilation"]


@CASES
@given(case=conv_cases())
def test_conv2d_matches_torch(xp, case):
    rng = numpy.random.default_rng(0)
    x, w, b = _arrays(xp, rng, case)
    y, cache = F.conv2d_forward(x, w, b, *_geom(case))
    dy = randn(xp, rng, *y.shape)
    dx, dw, db = F.conv2d_backward(dy, cache)

    s, p, d = _geom(case)
    ty, (tdx, tdw, tdb) = torch_run(
        lambda x, w, b: torch.nn.functional.conv2d(x, w, b, s, p, d), [x, w, b], dy
    )
    assert y.dtype == numpy.float32 and dx.dtype == numpy.float32
    assert_close(y, ty, what="y")
    assert_close(dx, tdx, what="dx")
    assert_close(dw, tdw, what="dw")
    if case["bias"]:
        assert_close(db, tdb, what="db")
    else:
        assert db is None


@CASES
@given(case=conv_cases())
def test_conv2d_gradient_check(xp, case):
    rng = numpy.random.default_rng(1)
    x, w, b = _arrays(xp, rng, case, dtype=numpy.float64)
    geom = _geom(case)
    if b is None:
        b = xp.zeros(case["o"])  # checked as an input; the op simply adds it
    y, _ = F.conv2d_forward(x, w, b, *geom)
    dy = randn(xp, rng, *y.shape, dtype=numpy.float64)

    def backward(dy, x, w, b):
        return F.conv2d_backward(dy, F.conv2d_forward(x, w, b, *geom)[1])

    check_function(lambda x, w, b: F.conv2d_forward(x, w, b, *geom)[0], backward, [x, w, b], dy)


def test_im2col_and_col2im_are_adjoint(xp, rng):
    # <im2col(x), c> == <x, col2im(c)> for every x and c: the backward scatter is the exact transpose.
    x = randn(xp, rng, 2, 3, 7, 6, dtype=numpy.float64)
    geom = dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1))
    cols, (ho, wo) = F.im2col(x, **geom)
    assert (ho, wo) == (output_size(7, 3, 2, 1, 2), output_size(6, 2, 1, 2, 1))
    c = randn(xp, rng, *cols.shape, dtype=numpy.float64)
    lhs = float((cols * c).sum())
    rhs = float((x * F.col2im(c, x.shape, **geom)).sum())
    assert abs(lhs - rhs) < 1e-9 * max(1.0, abs(lhs))


def test_conv_output_is_channels_last(xp, rng):
    x = randn(xp, rng, 2, 3, 5, 5)
    y, _ = F.conv2d_forward(x, randn(xp, rng, 4, 3, 3, 3), None, 1, 1, 1)
    assert y.shape == (2, 4, 5, 5)
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous


def test_channel_mismatch_is_an_error(xp, rng):
    with pytest.raises(ValueError, match="3 channels, weight expects 2"):
        F.conv2d_forward(randn(xp, rng, 1, 3, 4, 4), randn(xp, rng, 2, 2, 3, 3))


def test_checker_catches_a_wrong_conv_backward(xp, rng):
    x = randn(xp, rng, 1, 2, 5, 5, dtype=numpy.float64)
    w = randn(xp, rng, 3, 2, 3, 3, dtype=numpy.float64)
    dy = randn(xp, rng, 1, 3, 3, 3, dtype=numpy.float64)

    def wrong_backward(dy, x, w):
        dx, dw, _ = F.conv2d_backward(dy, F.conv2d_forward(x, w)[1])
        return dx, dw[:, :, ::-1, ::-1]  # a flipped kernel gradient: a classic bug

    with pytest.raises(GradientCheckError):
        check_function(lambda x, w: F.conv2d_forward(x, w)[0], wrong_backward, [x, w], dy)
