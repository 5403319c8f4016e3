"""ReLU."""

from __future__ import annotations

from xpnet.backend import get_array_module


def relu_forward(x):
    """x: any shape -> (y, cache) with y = max(x, 0), same shape and memory order."""
    xp = get_array_module(x)
    # Into x's layout: CuPy allocates a bare ufunc result in C order.
    y = xp.maximum(x, 0, out=xp.empty_like(x))
    return y, y


def relu_backward(dy, y):
    """dy, y: same shape -> dx. The gradient passes where the output was positive (0 at x = 0,
    as in PyTorch)."""
    xp = get_array_module(dy, y)
    return xp.where(y > 0, dy, 0).astype(dy.dtype, copy=False)
