"""Inverted dropout: scale the kept units at training time so evaluation is the identity."""

from __future__ import annotations


def dropout_forward(x, p, u):
    """x: any shape; p: drop probability in [0, 1]; u: uniform [0, 1) samples of x's shape.

    Returns (y, mask) with y = x * mask, mask = (u >= p) / (1 - p) (all zeros when p == 1).
    """
    keep = u >= p
    scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)
    mask = keep.astype(x.dtype) * x.dtype.type(scale)
    return x * mask, mask


def dropout_backward(dy, mask):
    """dy: same shape as the forward input -> dx = dy * mask."""
    return dy * mask
