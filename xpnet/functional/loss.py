"""Softmax cross-entropy, fused so its gradient is the simple softmax - target."""

from __future__ import annotations

from xpnet.backend import get_array_module


def _log_softmax(logits):
    xp = get_array_module(logits)
    z = logits - logits.max(axis=1, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))


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
    logp = _log_softmax(logits)
    target = _targets(labels, k, logits.dtype, label_smoothing, xp)
    loss = float(-(target * logp).sum()) / n
    return loss, (logp, target)


def cross_entropy_backward(cache, scale=1.0):
    """-> dlogits: (N, K), the gradient of ``scale`` times the mean loss."""
    logp, target = cache
    xp = get_array_module(logp)
    n = logp.shape[0]
    return (xp.exp(logp) - target) * logp.dtype.type(scale / n)
