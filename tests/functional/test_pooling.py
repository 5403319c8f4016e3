import numpy
import pytest
from _support import CASES, assert_close, randn, spread, torch_run
from hypothesis import given
from hypothesis import strategies as st

from xpnet import functional as F
from xpnet.gradient_check import check_function

torch = pytest.importorskip("torch")
from xpnet.reference import max_pool2d_sharing_ties  # noqa: E402


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


def tied(xp, rng, shape, dtype=numpy.float32):
    """Small integers, so most windows hold their maximum more than once."""
    return xp.asarray(rng.integers(-2, 3, shape).astype(dtype))


@CASES
@given(case=pool_cases())
def test_maxpool_sharing_ties_matches_its_torch_formulation(xp, case):
    rng = numpy.random.default_rng(3)
    x = tied(xp, rng, case["shape"])
    args = (case["k"], case["stride"], case["pad"])
    y, cache = F.maxpool2d_forward(x, *args, ties="share")
    dy = randn(xp, rng, *y.shape)
    dx = F.maxpool2d_backward(dy, cache)
    ty, (tdx,) = torch_run(lambda x: max_pool2d_sharing_ties(x, *args), [x], dy)
    assert_close(y, ty)
    assert_close(dx, tdx)
    first_y, _ = F.maxpool2d_forward(x, *args)
    assert_close(y, first_y, rtol=0, atol=0)


def test_maxpool_sharing_ties_gives_every_maximum_the_whole_gradient(xp):
    x = xp.asarray(numpy.array([[[[1, 1, 0, 2], [0, 1, 2, 2]]]], dtype=numpy.float32))
    y, cache = F.maxpool2d_forward(x, 2, 2, ties="share")
    dx = F.maxpool2d_backward(xp.asarray(numpy.array([[[[1.0, 10.0]]]], dtype=numpy.float32)), cache)
    expected = numpy.array([[[[1, 1, 0, 10], [0, 1, 10, 10]]]], dtype=numpy.float32)
    assert_close(dx, expected, rtol=0, atol=0)
    _, first = F.maxpool2d_forward(x, 2, 2)
    assert float(F.maxpool2d_backward(xp.ones_like(y), first).sum()) == 2.0


@CASES
@given(case=pool_cases())
def test_maxpool_sharing_ties_gradient_check(xp, case):
    # Away from ties the sharing rule is the derivative, as the first-maximum rule is.
    rng = numpy.random.default_rng(4)
    x = spread(xp, rng, *case["shape"])
    args = (case["k"], case["stride"], case["pad"])
    y, _ = F.maxpool2d_forward(x, *args, ties="share")
    dy = randn(xp, rng, *y.shape, dtype=numpy.float64)
    check_function(
        lambda x: F.maxpool2d_forward(x, *args, ties="share")[0],
        lambda dy, x: (F.maxpool2d_backward(dy, F.maxpool2d_forward(x, *args, ties="share")[1]),),
        [x],
        dy,
        eps=1e-4,
    )


def test_maxpool_rejects_an_unknown_tie_rule():
    with pytest.raises(ValueError, match="ties"):
        F.maxpool2d_forward(numpy.zeros((1, 1, 2, 2), numpy.float32), 2, ties="random")


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


@pytest.mark.parametrize("ties", ["first", "share"])
@pytest.mark.parametrize(("shape", "k"), [((2, 3, 6, 6), (2, 2)), ((2, 3, 7, 5), (2, 2)), ((1, 2, 7, 8), (3, 2))])
def test_maxpool_disjoint_windows_match_torch_with_ties(xp, ties, shape, k):
    # Windows that tile the input (stride = kernel) take the backward that writes each tap's
    # gradient in place; odd edges no window covers get zero.
    rng = numpy.random.default_rng(5)
    x = tied(xp, rng, shape)
    y, cache = F.maxpool2d_forward(x, k, k, 0, ties=ties)
    dy = randn(xp, rng, *y.shape)
    dx = F.maxpool2d_backward(dy, cache)

    def reference(x):
        if ties == "share":
            return max_pool2d_sharing_ties(x, k, k, 0)
        return torch.nn.functional.max_pool2d(x, k, k)

    ty, (tdx,) = torch_run(reference, [x], dy)
    assert_close(y, ty)
    assert_close(dx, tdx, rtol=0, atol=1e-6)
