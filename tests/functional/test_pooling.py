import numpy
import pytest
from _support import CASES, assert_close, randn, spread, torch_run
from hypothesis import given
from hypothesis import strategies as st

from xpnet import functional as F
from xpnet.gradient_check import check_function

torch = pytest.importorskip("torch")


@st.composite
def pool_cases(draw, with_padding=True):
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pad = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2))) if with_padding else (0, 0)
    h, w = draw(st.integers(k[0], 8)), draw(st.integers(k[1], 8))
    return dict(shape=(draw(st.integers(1, 3)), draw(st.integers(1, 4)), h, w), k=k, stride=stride, pad=pad)


@CASES
@given(case=pool_cases())
def test_maxpool_matches_torch(xp, case):
    rng = numpy.random.default_rng(0)
    x = spread(xp, rng, *case["shape"], dtype=numpy.float32)
    y, cache = F.maxpool2d_forward(x, case["k"], case["stride"], case["pad"])
    dy = randn(xp, rng, *y.shape)
    dx = F.maxpool2d_backward(dy, cache)
    ty, (tdx,) = torch_run(
        lambda x: torch.nn.functional.max_pool2d(x, case["k"], case["stride"], case["pad"]), [x], dy
    )
    assert_close(y, ty)
    assert_close(dx, tdx)


def test_maxpool_ties_send_the_gradient_to_the_first_maximum(xp):
    x = xp.ones((1, 1, 2, 2), dtype=numpy.float32)
    y, cache = F.maxpool2d_forward(x, 2, 2)
    dx = F.maxpool2d_backward(xp.ones_like(y), cache)
    _, (tdx,) = torch_run(lambda x: torch.nn.functional.max_pool2d(x, 2, 2), [x], xp.ones_like(y))
    assert_close(dx, tdx)
    assert float(dx.sum()) == 1.0


@CASES
@given(case=pool_cases())
def test_maxpool_gradient_check(xp, case):
    rng = numpy.random.default_rng(1)
    x = spread(xp, rng, *case["shape"])
    args = (case["k"], case["stride"], case["pad"])
    y, _ = F.maxpool2d_forward(x, *args)
    dy = randn(xp, rng, *y.shape, dtype=numpy.float64)
    check_function(
        lambda x: F.maxpool2d_forward(x, *args)[0],
        lambda dy, x: (F.maxpool2d_backward(dy, F.maxpool2d_forward(x, *args)[1]),),
        [x],
        dy,
        eps=1e-4,
    )


@CASES
@given(case=pool_cases(with_padding=False))
def test_avgpool_matches_torch_and_gradient_check(xp, case):
    rng = numpy.random.default_rng(2)
    x = randn(xp, rng, *case["shape"], dtype=numpy.float64)
    y, cache = F.avgpool2d_forward(x, case["k"], case["stride"])
    dy = randn(xp, rng, *y.shape, dtype=numpy.float64)
    dx = F.avgpool2d_backward(dy, cache)
    ty, (tdx,) = torch_run(lambda x: torch.nn.functional.avg_pool2d(x, case["k"], case["stride"]), [x], dy)
    assert_close(y, ty, rtol=1e-10, atol=1e-12)
    assert_close(dx, tdx, rtol=1e-10, atol=1e-12)
    check_function(
        lambda x: F.avgpool2d_forward(x, case["k"], case["stride"])[0],
        lambda dy, x: (F.avgpool2d_backward(dy, F.avgpool2d_forward(x, case["k"], case["stride"])[1]),),
        [x],
        dy,
    )


def test_global_avgpool_matches_torch_and_gradient_check(xp, rng):
    x = randn(xp, rng, 3, 5, 3, 4, dtype=numpy.float64)
    y, shape = F.global_avgpool_forward(x)
    assert y.shape == (3, 5, 1, 1)
    dy = randn(xp, rng, *y.shape, dtype=numpy.float64)
    dx = F.global_avgpool_backward(dy, shape)
    ty, (tdx,) = torch_run(lambda x: torch.nn.functional.adaptive_avg_pool2d(x, 1), [x], dy)
    assert_close(y, ty, rtol=1e-12)
    assert_close(dx, tdx, rtol=1e-12)
    check_function(
        lambda x: F.global_avgpool_forward(x)[0],
        lambda dy, x: (F.global_avgpool_backward(dy, x.shape),),
        [x],
        dy,
    )
