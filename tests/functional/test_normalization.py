import numpy
import pytest
from _support import CASES, assert_close, randn, torch_run
from hypothesis import given
from hypothesis import strategies as st

from xpnet import backend
from xpnet import functional as F
from xpnet.gradient_check import check_function

torch = pytest.importorskip("torch")

shapes = st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5), st.integers(1, 5)).filter(
    lambda s: s[0] * s[2] * s[3] > 1
)


@CASES
@given(shape=shapes)
def test_batchnorm_train_matches_torch(xp, shape):
    rng = numpy.random.default_rng(0)
    x = randn(xp, rng, *shape) * 3.0 + 1.0
    gamma, beta = randn(xp, rng, shape[1]), randn(xp, rng, shape[1])
    y, cache, mean, var = F.batchnorm_train_forward(x, gamma, beta, 1e-5)
    dy = randn(xp, rng, *shape)
    dx, dgamma, dbeta = F.batchnorm_backward(dy, cache)

    def ref(x, g, b):
        return torch.nn.functional.batch_norm(x, None, None, g, b, training=True, eps=1e-5)

    ty, (tdx, tdg, tdb) = torch_run(ref, [x, gamma, beta], dy)
    assert y.dtype == numpy.float32
    assert_close(y, ty, rtol=1e-3, atol=1e-4)
    assert_close(dx, tdx, rtol=1e-3, atol=1e-3)
    assert_close(dgamma, tdg, rtol=1e-3, atol=1e-4)
    assert_close(dbeta, tdb, rtol=1e-4, atol=1e-4)
    xn = x.transpose(0, 2, 3, 1).reshape(-1, shape[1])
    assert_close(mean, backend.asnumpy(xn.mean(0)))


@CASES
@given(shape=shapes)
def test_batchnorm_gradient_check(xp, shape):
    rng = numpy.random.default_rng(1)
    x = randn(xp, rng, *shape, dtype=numpy.float64)
    g, b = randn(xp, rng, shape[1], dtype=numpy.float64), randn(xp, rng, shape[1], dtype=numpy.float64)
    dy = randn(xp, rng, *shape, dtype=numpy.float64)
    check_function(
        lambda x, g, b: F.batchnorm_train_forward(x, g, b)[0],
        lambda dy, x, g, b: F.batchnorm_backward(dy, F.batchnorm_train_forward(x, g, b)[1]),
        [x, g, b],
        dy,
    )


def test_batchnorm_eval_matches_torch(xp, rng):
    x = randn(xp, rng, 2, 3, 4, 4)
    g, b = randn(xp, rng, 3), randn(xp, rng, 3)
    rm, rv = randn(xp, rng, 3), xp.abs(randn(xp, rng, 3)) + 0.5
    y = F.batchnorm_eval_forward(x, g, b, rm, rv, 1e-5)
    ty = torch.nn.functional.batch_norm(
        *(torch.from_numpy(backend.asnumpy(a)) for a in (x, rm, rv, g, b)),
        training=False,
        eps=1e-5,
    )
    assert_close(y, ty.numpy())
