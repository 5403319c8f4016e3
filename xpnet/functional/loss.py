"""Softmax cross-entropy, fused so its gradient is the simple softmax - target; softmax itself.

On a GPU the whole of it is two launches: one kernel over the batch's rows, with the K classes'
columns as K arguments (K is small), writes each row's loss, whether its prediction is right,
whether its label lies outside [0, K), and its gradient; one reduction sums the three. The
gradient is made with the forward, for the mean loss, and scaled in the backward only if asked.
A label outside [0, K) raises LabelError on NumPy at once; on a GPU it only gets no one-hot
target, so it is counted on the device for the caller to read when it next syncs.
"""

from __future__ import annotations

import functools

import numpy

from xpnet import backend
from xpnet.backend import get_array_module
from xpnet.errors import XpnetError


class LabelError(XpnetError, ValueError):
    """A label outside [0, K): the data does not fit the model."""


def check_labels(labels, k):
    """Raise LabelError where a host (NumPy) label lies outside [0, k)."""
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= k):
        bad = labels[(labels < 0) | (labels >= k)]
        raise LabelError(f"{bad.size} label(s) outside [0, {k}), for example {int(bad[0])}")


def _log_softmax(logits):
    xp = get_array_module(logits)
    z = logits - logits.max(axis=1, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))


def softmax(logits):
    """logits: (N, K) float -> probabilities (N, K), each row summing to 1 (computed from
    ``logits - max`` so that no exp overflows)."""
    xp = get_array_module(logits)
    p = xp.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return p


def _targets(labels, k, dtype, label_smoothing, xp):
    t = xp.full((labels.shape[0], k), label_smoothing / k, dtype=dtype)
    t[xp.arange(labels.shape[0]), labels] += 1.0 - label_smoothing
    return t


def cross_entropy_forward(logits, labels, label_smoothing=0.0):
    """logits: (N, K) float; labels: (N,) int in [0, K) -> (mean loss as a Python float, cache).

    With ``label_smoothing`` = s the target is (1 - s) one-hot + s / K everywhere, as in
    ``torch.nn.functional.cross_entropy``.
    """
    xp = get_array_module(logits, labels)
    n, k = logits.shape
    if xp is not numpy:
        sums, cache = cross_entropy_sums(logits, labels, label_smoothing)
        return float(sums[0]) / n, cache
    check_labels(labels, k)
    logp = _log_softmax(logits)
    target = _targets(labels, k, logits.dtype, label_smoothing, xp)
    loss = float(-(target * logp).sum()) / n
    return loss, (logp, target)


def cross_entropy_backward(cache, scale=1.0):
    """-> dlogits: (N, K), the gradient of ``scale`` times the mean loss."""
    if isinstance(cache[0], str):  # ("device", the gradient made with the forward, hits)
        grad = cache[1]
        return grad if scale == 1.0 else grad * grad.dtype.type(scale)
    logp, target = cache
    xp = get_array_module(logp)
    n = logp.shape[0]
    return (xp.exp(logp) - target) * logp.dtype.type(scale / n)


@functools.lru_cache(maxsize=None)
def _rows(k):
    """The per-row kernel for K classes: ``(*logits[:, i], labels, off, on, inv_n, *grad[:, i],
    loss, right, bad)`` writes each row's loss, prediction hit (1 or 0), label outside [0, K)
    (1 or 0) and its gradient softmax - target, over n; target = off + on * onehot(label).
    Cached per K."""

    def cross_entropy_rows(*args):
        xp = backend.xp()
        cols, (labels, off, on, inv_n) = args[:k], args[k : k + 4]
        grads, (loss, right, bad) = args[k + 4 : 2 * k + 4], args[2 * k + 4 :]
        top, best = cols[0], labels.dtype.type(0) * labels
        for i in range(1, k):
            # Strictly greater: the first maximum wins, as argmax.
            best = xp.where(cols[i] > top, labels.dtype.type(i), best)
            top = xp.maximum(top, cols[i])
        exps = [xp.exp(c - top) for c in cols]
        total = exps[0]
        for e in exps[1:]:
            total = total + e
        log_total = xp.log(total)
        row = None
        for i in range(k):
            t = off + on * (labels == labels.dtype.type(i))
            term = t * (cols[i] - top - log_total)
            row = term if row is None else row + term
            xp.multiply(exps[i] / total - t, inv_n, grads[i])
        xp.negative(row, loss)
        xp.multiply(best == labels, off.dtype.type(1), right)
        xp.multiply((labels < labels.dtype.type(0)) | (labels >= labels.dtype.type(k)), off.dtype.type(1), bad)

    return cross_entropy_rows


def cross_entropy_sums(logits, labels, label_smoothing=0.0):
    """The device form, with no host read: logits (N, K), labels (N,) -> (sums, cache), sums a
    (3,) device array: the summed loss, the number of rows whose largest logit (the first one,
    on ties) is the label's, and the number of labels outside [0, K) (which get no one-hot
    target: read it where the loop next syncs)."""
    xp = get_array_module(logits, labels)
    n, k = logits.shape
    s = logits.dtype.type
    grad = xp.empty((n, k), dtype=logits.dtype)
    rows = xp.empty((3, n), dtype=logits.dtype)
    backend.fuse(_rows(k))(
        *(logits[:, i] for i in range(k)), labels, s(label_smoothing / k), s(1.0 - label_smoothing), s(1.0 / n),
        *(grad[:, i] for i in range(k)), rows[0], rows[1], rows[2],
    )
    sums = rows.sum(axis=1)
    return sums, ("device", grad, sums[1])
