"""Fully connected layer y = x W^T + b."""

from __future__ import annotations

from xpnet.backend import get_array_module


def linear_forward(x, w, b):
    """x: (N, in); w: (out, in); b: (out,) or None -> (y: (N, out), cache)."""
    y = x @ w.T
    if b is not None:
        y += b
    return y, (x, w)


def linear_backward(dy, cache, has_bias=True, dw_out=None, db_out=None):
    """dy: (N, out) -> (dx: (N, in), dw: (out, in), db: (out,) or None); ``dw_out``, ``db_out``:
    arrays to write dw and db into (then returned), or None."""
    x, w = cache
    xp = get_array_module(dy, x)
    dx = dy @ w
    dw = xp.matmul(dy.T, x, out=dw_out)
    db = (xp.sum(dy, axis=0, out=db_out) if db_out is not None else dy.sum(axis=0)) if has_bias else None
    return dx, dw, db
