"""Moving between the NCHW interface and the channels-last rows the kernels work on."""

from __future__ import annotations


def to_rows(x):
    """x: (N, C, H, W), any memory order -> (N*H*W, C) rows, one per pixel.

    A view when ``x`` is channels-last in memory (as every xpnet kernel returns it); otherwise one
    copy into that order.
    """
    n, c, h, w = x.shape
    return x.transpose(0, 2, 3, 1).reshape(n * h * w, c)


def from_rows(rows, shape):
    """rows: (N*H*W, C) -> (N, C, H, W) view of the same channels-last memory; ``shape`` is NCHW."""
    n, c, h, w = shape
    return rows.reshape(n, h, w, c).transpose(0, 3, 1, 2)


def nhwc(x):
    """x: (N, C, H, W) -> (N, H, W, C) view (contiguous when x is channels-last in memory)."""
    return x.transpose(0, 2, 3, 1)


def nchw(x):
    """x: (N, H, W, C) -> (N, C, H, W) view."""
    return x.transpose(0, 3, 1, 2)
