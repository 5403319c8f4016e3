"""Fully connected layer y = x W^T + b."""

from __future__ import annotations


def linear_forward(x, w, b):
    """x: (N, in); w: (out, in); b: (out,) or None -> (y: (N, out), cache)."""
    y = x @ w.T
    if b is not None:
        y += b
    return y, (x, w)


def linear_backward(dy, cache, has_bias=True):
    """dy: (N, out) -> (dx: (N, in), dw: (out, in), db: (out,) or None)."""
    x, w = cache
    dx = dy @ w
    dw = dy.T @ x
    db = dy.sum(axis=0) if has_bias else None
    return dx, dw, db
