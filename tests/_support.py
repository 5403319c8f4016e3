"""Test helpers: PyTorch as the reference, and comparisons across backends."""

from __future__ import annotations

import numpy
from hypothesis import HealthCheck, settings

from xpnet import backend

# Hypothesis re-runs the body for each example while the backend fixture stays selected.
CASES = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)


def torch_run(fn, inputs, dy):
    """Run ``fn(*tensors)`` in PyTorch (float64) and backpropagate ``dy``.

    inputs: host or device arrays (None passes through) -> (y, [input grads]) as host arrays.
    """
    import torch

    ts = [
        None if a is None else torch.tensor(backend.asnumpy(a), dtype=torch.float64, requires_grad=True)
        for a in inputs
    ]
    y = fn(*ts)
    y.backward(torch.tensor(backend.asnumpy(dy), dtype=torch.float64))
    return y.detach().numpy(), [None if t is None else t.grad.numpy() for t in ts]


def assert_close(actual, expected, rtol=2e-4, atol=2e-5, what=""):
    numpy.testing.assert_allclose(backend.asnumpy(actual), backend.asnumpy(expected), rtol=rtol, atol=atol,
                                  err_msg=what)


def randn(xp, rng, *shape, dtype=numpy.float32):
    return xp.asarray(rng.standard_normal(shape).astype(dtype))


def spread(xp, rng, *shape, gap=0.05, dtype=numpy.float64):
    """Values with distinct magnitudes at least ``gap`` apart and away from 0, so max-pool has no
    ties and ReLU no kinks within a finite-difference step."""
    n = int(numpy.prod(shape))
    v = (rng.permutation(n) - n / 2 + 0.5) * gap
    return xp.asarray(v.reshape(shape).astype(dtype))



def run_without_torch(argv):
    """``xpnet.cli.main(argv)`` in a fresh interpreter where torch cannot be imported -> the
    CompletedProcess (text output)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import xpnet, xpnet.training.loop, xpnet.tools.report, xpnet.cli, xpnet.tools.bench\n"
        "from xpnet.cli import main\n"
        f"sys.exit(main({[str(a) for a in argv]!r}))\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def run_plan(xp, plan, x, wt, dz, nb):
    """A 3x3 convolution plan run chunk by chunk of ``nb`` images, as the fused block runs it.

    x: (N, H, W, C), wt: (O, C, 3, 3), dz: (N, H, W, O) -> (y (N, H, W, O), dw (O, C, 3, 3),
    dx (N, H, W, C)).
    """
    n, h, w, c = x.shape
    o = wt.shape[0]
    wk = plan.weights(wt)
    y = xp.empty((n, h, w, o))
    dx = xp.empty((n, h, w, c))
    dw = xp.zeros(plan.dw_shape)
    part = xp.empty(plan.dw_shape)
    for n0 in range(0, n, nb):
        n1 = min(n, n0 + nb)
        plan.forward_into(x, n0, n1, wk, y[n0:n1], 0)
        plan.backward_into(x, dz[n0:n1], n0, n1, wk, part, dx[n0:n1], 0)
        dw += part
    return y, plan.dw_finish(dw), dx
