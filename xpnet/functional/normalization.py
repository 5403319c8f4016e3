"""Batch normalisation over the channel axis of NCHW-shaped, channels-last arrays.

The math runs on (M, C) rows, M = N*H*W, where every statistic is a column reduction.

Data-parallel training splits a batch over ranks. Synchronised BatchNorm (``--sync-bn``) needs
the statistics of the whole batch: every per-channel sum the math takes (and the count M) goes
through a ``reduce_sums`` hook that adds it up over the ranks (``xpnet.distributed``), while the
rest of the math stays per rank. Without a hook (``None``, the default) the sums are this
process's own, which is also what one process computes for the whole batch.
"""

from __future__ import annotations

import numpy

from xpnet.backend import get_array_module
from xpnet.functional.layout import from_rows, to_rows


def sums_over_ranks(reduce_sums, sums, count):
    """The per-channel ``sums`` (a tuple of (C,) arrays) and the value ``count`` added up over the
    data-parallel ranks, in one ``reduce_sums`` call -> (tuple of (C,) arrays, int count).

    ``reduce_sums(a)``: a 1-D float64 array -> its sum over ranks (may reuse ``a``). The sums
    travel in float64, so the round trip keeps a float32 sum exact. With ``reduce_sums`` None
    the inputs come back as they are.
    """
    if reduce_sums is None:
        return tuple(sums), count
    xp = get_array_module(*sums)
    packed = xp.concatenate([s.astype(numpy.float64).ravel() for s in sums] + [xp.full(1, count, numpy.float64)])
    packed = reduce_sums(packed)
    c = sums[0].shape[0] if sums else 0
    out = tuple(packed[i * c : (i + 1) * c].astype(s.dtype) for i, s in enumerate(sums))
    return out, int(packed[-1])


def batchnorm_train_forward(x, gamma, beta, eps=1e-5, reduce_sums=None):
    """x: (N, C, H, W); gamma, beta: (C,) -> (y, cache, mean, var).

    Normalises with the batch's own statistics (over every rank with ``reduce_sums``, see the
    module docstring). ``mean`` and the biased ``var`` (both (C,)) are returned for the caller's
    running averages.
    """
    xp = get_array_module(x, gamma, beta)
    rows = to_rows(x)
    (s,), m = sums_over_ranks(reduce_sums, (rows.sum(axis=0),), rows.shape[0])
    mean = s / m
    xc = rows - mean
    # Two passes (mean, then squared deviations) as before: sums of squares lose float32 digits.
    (ss,), _ = sums_over_ranks(reduce_sums, ((xc * xc).sum(axis=0),), 0)
    var = ss / m
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


def batchnorm_backward(dy, cache, reduce_sums=None):
    """dy: (N, C, H, W) -> (dx: (N, C, H, W), dgamma: (C,), dbeta: (C,)) for a training-mode
    forward, differentiating through the batch statistics.

    With ``reduce_sums`` (as in the forward) dx uses the sums over every rank, while dgamma and
    dbeta stay this rank's share: the data-parallel gradient sum adds the shares up.
    """
    xhat, inv_std, gamma = cache
    dy_rows = to_rows(dy)
    dbeta = dy_rows.sum(axis=0)
    dgamma = (dy_rows * xhat).sum(axis=0)
    (sum_dy, sum_dy_xhat), m = sums_over_ranks(reduce_sums, (dbeta, dgamma), dy_rows.shape[0])
    # dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat))
    dx = dy_rows - xhat * (sum_dy_xhat / m)
    dx -= sum_dy / m
    dx *= gamma * inv_std
    return from_rows(dx, dy.shape), dgamma, dbeta
