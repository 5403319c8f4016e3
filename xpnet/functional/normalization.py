"""Batch normalisation over the channel axis of NCHW-shaped, channels-last arrays.

The math runs on (M, C) rows, M = N*H*W, where every statistic is a column reduction.
"""

from __future__ import annotations

from xpnet.backend import get_array_module
from xpnet.functional.layout import from_rows, to_rows


def batchnorm_train_forward(x, gamma, beta, eps=1e-5):
    """x: (N, C, H, W); gamma, beta: (C,) -> (y, cache, mean, var).

    Normalises with the batch's own statistics. ``mean`` and the biased ``var`` (both (C,)) are
    returned for the caller's running averages.
    """
    xp = get_array_module(x, gamma, beta)
    rows = to_rows(x)
    mean = rows.mean(axis=0)
    xc = rows - mean
    var = (xc * xc).mean(axis=0)
    inv_std = 1.0 / xp.sqrt(var + eps)
    xhat = xc
    xhat *= inv_std
    y = xhat * gamma + beta
    return from_rows(y, x.shape), (xhat, inv_std, gamma), mean, var


def batchnorm_eval_forward(x, gamma, beta, running_mean, running_var, eps=1e-5):
    """x: (N, C, H, W); all others (C,) -> y: (N, C, H, W), normalised with running statistics."""
    xp = get_array_module(x, gamma, beta)
    scale = gamma / xp.sqrt(running_var + eps)
    shift = beta - running_mean * scale
    return from_rows(to_rows(x) * scale + shift, x.shape)


def batchnorm_backward(dy, cache):
    """dy: (N, C, H, W) -> (dx: (N, C, H, W), dgamma: (C,), dbeta: (C,)) for a training-mode
    forward, differentiating through the batch statistics."""
    xhat, inv_std, gamma = cache
    dy_rows = to_rows(dy)
    m = dy_rows.shape[0]
    dbeta = dy_rows.sum(axis=0)
    dgamma = (dy_rows * xhat).sum(axis=0)
    # dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat))
    dx = dy_rows - xhat * (dgamma / m)
    dx -= dbeta / m
    dx *= gamma * inv_std
    return from_rows(dx, dy.shape), dgamma, dbeta
