"""ReLU, dropout, linear and the loss: the small functions, each against PyTorch and the checker."""

import numpy
import pytest
from _support import assert_close, randn, spread, torch_run

from xpnet import backend
from xpnet import functional as F
from xpnet.gradient_check import check_function

torch = pytest.importorskip("torch")


def test_relu_matches_torch_and_gradient_check(xp, rng):
    x = spread(xp, rng, 3, 4, 5)
    y, cache = F.relu_forward(x)
    dy = randn(xp, rng, *x.shape, dtype=numpy.float64)
    ty, (tdx,) = torch_run(torch.relu, [x], dy)
    assert_close(y, ty, rtol=0, atol=0)
    assert_close(F.relu_backward(dy, cache), tdx, rtol=0, atol=0)
    check_function(
        lambda x: F.relu_forward(x)[0], lambda dy, x: (F.relu_backward(dy, F.relu_forward(x)[1]),), [x], dy
    )


def test_relu_gradient_at_zero_is_zero_like_torch(xp):
    x = xp.zeros((4,), dtype=numpy.float32)
    _, (tdx,) = torch_run(torch.relu, [x], xp.ones(4))
    assert_close(F.relu_backward(xp.ones(4, dtype=numpy.float32), F.relu_forward(x)[1]), tdx)


@pytest.mark.parametrize("p", [0.0, 0.3, 0.9, 1.0])
def test_dropout_is_inverted_and_its_backward_uses_the_mask(xp, rng, p):
    x = randn(xp, rng, 400, 50)
    u = backend.uniform(rng, x.shape)
    y, mask = F.dropout_forward(x, p, u)
    kept = backend.asnumpy(u) >= p
    expected = numpy.where(kept, backend.asnumpy(x) / (1 - p) if p < 1 else 0.0, 0.0)
    assert_close(y, expected, rtol=1e-6, atol=1e-7)
    assert y.dtype == numpy.float32
    dy = randn(xp, rng, *x.shape)
    assert_close(F.dropout_backward(dy, mask), backend.asnumpy(dy) * backend.asnumpy(mask), rtol=0, atol=0)
    x64, dy64 = x.astype(numpy.float64), dy.astype(numpy.float64)
    check_function(
        lambda x: F.dropout_forward(x, p, u)[0],
        lambda dy, x: (F.dropout_backward(dy, F.dropout_forward(x, p, u)[1]),),
        [x64],
        dy64,
    )
    if 0 < p < 1:  # the mask keeps the expectation: mean(mask) ~ 1
        assert abs(float(backend.asnumpy(mask).mean()) - 1.0) < 0.05


@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch_and_gradient_check(xp, rng, bias):
    x, w = randn(xp, rng, 5, 7, dtype=numpy.float64), randn(xp, rng, 3, 7, dtype=numpy.float64)
    b = randn(xp, rng, 3, dtype=numpy.float64) if bias else None
    y, cache = F.linear_forward(x, w, b)
    dy = randn(xp, rng, 5, 3, dtype=numpy.float64)
    dx, dw, db = F.linear_backward(dy, cache, bias)
    ty, tg = torch_run(lambda x, w, b: torch.nn.functional.linear(x, w, b), [x, w, b], dy)
    for ours, ref in zip((y, dx, dw, db), (ty, *tg)):
        if ref is None:
            assert ours is None
        else:
            assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    inputs = [x, w] + ([b] if bias else [])
    check_function(
        lambda *a: F.linear_forward(a[0], a[1], a[2] if bias else None)[0],
        lambda dy, *a: [g for g in F.linear_backward(dy, F.linear_forward(a[0], a[1], a[2] if bias else None)[1], bias)
                        if g is not None],
        inputs,
        dy,
    )


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_torch_and_gradient_check(xp, rng, smoothing):
    logits = randn(xp, rng, 6, 10, dtype=numpy.float64) * 4.0
    labels = xp.asarray(rng.integers(0, 10, 6))
    loss, cache = F.cross_entropy_forward(logits, labels, smoothing)
    grad = F.cross_entropy_backward(cache)
    t = torch.tensor(backend.asnumpy(logits), requires_grad=True)
    tl = torch.nn.functional.cross_entropy(t, torch.from_numpy(backend.asnumpy(labels)), label_smoothing=smoothing)
    tl.backward()
    assert isinstance(loss, float)
    assert abs(loss - tl.item()) < 1e-12
    assert_close(grad, t.grad.numpy(), rtol=1e-10, atol=1e-12)
    check_function(
        lambda z: xp.asarray(F.cross_entropy_forward(z, labels, smoothing)[0]),
        lambda dy, z: (F.cross_entropy_backward(F.cross_entropy_forward(z, labels, smoothing)[1]) * dy,),
        [logits],
        1.0,
    )


def test_cross_entropy_is_stable_for_huge_logits(xp):
    logits = xp.asarray([[1000.0, 0.0], [0.0, -1000.0]], dtype=numpy.float32)
    loss, cache = F.cross_entropy_forward(logits, xp.asarray([0, 1]))
    assert numpy.isfinite(loss) and abs(loss - 500.0) < 1e-3
    assert numpy.isfinite(backend.asnumpy(F.cross_entropy_backward(cache))).all()


@pytest.mark.parametrize("bad", [-1, 3])
def test_a_label_outside_the_classes_is_an_error_or_a_count(xp, bad):
    logits = xp.zeros((4, 3), dtype=numpy.float32)
    labels = xp.asarray([0, 1, bad, 2])
    if xp is numpy:
        with pytest.raises(F.LabelError, match="outside"):
            F.cross_entropy_forward(logits, labels)
        return
    # On a GPU the loss kernel counts it beside the loss, for the caller to read when it syncs.
    sums, _ = F.cross_entropy_sums(logits, labels)
    assert backend.asnumpy(sums)[2] == 1
    sums, _ = F.cross_entropy_sums(logits, xp.asarray([0, 1, 2, 2]))
    assert backend.asnumpy(sums)[2] == 0


def test_softmax_matches_torch_and_survives_huge_logits(xp, rng):
    logits = randn(xp, rng, 6, 10) * 3.0
    expected = torch.softmax(torch.as_tensor(backend.asnumpy(logits)), dim=1).numpy()
    assert_close(F.softmax(logits), expected, rtol=1e-5, atol=1e-7)
    p = backend.asnumpy(F.softmax(xp.asarray([[1000.0, 0.0], [0.0, -1000.0]], dtype=numpy.float32)))
    numpy.testing.assert_allclose(p, [[1.0, 0.0], [1.0, 0.0]], atol=1e-6)
