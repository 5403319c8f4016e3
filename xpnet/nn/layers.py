"""Layers: parameters, caches and train/eval mode around ``xpnet.functional``.

Argument names and semantics follow ``torch.nn``; arrays are NCHW at the interface. Weights are
initialised as PyTorch does (uniform in +-1/sqrt(fan_in), symmetric about zero) from a host
``numpy.random.Generator``, then moved to the current backend.
"""

from __future__ import annotations

import math

import numpy

from xpnet import backend
from xpnet import functional as F
from xpnet.nn.module import Module, Parameter

DTYPE = numpy.float32


def _uniform_param(rng, shape, bound):
    rng = numpy.random.default_rng() if rng is None else rng
    return Parameter(backend.to_device(rng.uniform(-bound, bound, size=shape).astype(DTYPE)))


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


class _Cached(Module):
    """A layer whose backward needs what its last training-mode forward saw.

    Caches are kept only in training mode, so evaluation holds no activations; ``backward`` is
    for training mode.
    """

    def __init__(self):
        super().__init__()
        object.__setattr__(self, "_cache", None)

    def _take_cache(self):
        cache = self._cache
        if cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called without a forward pass")
        object.__setattr__(self, "_cache", None)
        return cache

    def _keep(self, cache):
        object.__setattr__(self, "_cache", cache if self.training else None)


class Conv2d(_Cached):
    """x: (N, in_channels, H, W) -> (N, out_channels, Ho, Wo); weight (out, in, kh, kw)."""

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        bias=True,
        rng=None,
    ):
        super().__init__()
        kh, kw = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        bound = 1.0 / math.sqrt(in_channels * kh * kw)
        self.weight = _uniform_param(rng, (out_channels, in_channels, kh, kw), bound)
        self.bias = _uniform_param(rng, (out_channels,), bound) if bias else None

    def forward(self, x):
        b = None if self.bias is None else self.bias.data
        y, cache = F.conv2d_forward(x, self.weight.data, b, self.stride, self.padding, self.dilation)
        self._keep(cache)
        return y

    def backward(self, dy):
        dx, dw, db = F.conv2d_backward(dy, self._take_cache())
        self.weight.grad += dw
        if self.bias is not None:
            self.bias.grad += db
        return dx

    def extra_repr(self):
        o, c, kh, kw = self.weight.shape
        return (
            f"{c}, {o}, kernel_size=({kh}, {kw}), stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, bias={self.bias is not None}"
        )


def _running_update(running_mean, running_var, mean, var, keep, mom, mom_unbiased):
    """The running averages' update in place, one fused kernel on CuPy."""
    running_mean *= keep
    running_mean += mom * mean
    running_var *= keep
    running_var += mom_unbiased * var


class BatchNorm2d(_Cached):
    """x: (N, C, H, W) -> same shape, normalised per channel.

    Training mode uses the batch's statistics and updates the running ones as PyTorch does:
    ``running = (1 - momentum) * running + momentum * batch``, with the unbiased batch variance.
    Eval mode uses the running statistics.

    ``reduce_sums``: None, or the hook that adds the batch statistics' sums up over data-parallel
    ranks (synchronised BatchNorm; ``xpnet.distributed`` sets it, see
    ``functional.normalization``).
    """

    reduce_sums = None
    counted_by = None  # the model whose forward counts this layer's batches, if one does

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        xp = backend.xp()
        self.eps, self.momentum = float(eps), float(momentum)
        self.weight = Parameter(xp.ones(num_features, dtype=DTYPE))
        self.bias = Parameter(xp.zeros(num_features, dtype=DTYPE))
        self.register_buffer("running_mean", xp.zeros(num_features, dtype=DTYPE))
        self.register_buffer("running_var", xp.ones(num_features, dtype=DTYPE))
        self.register_buffer("num_batches_tracked", xp.zeros((), dtype=numpy.int64))

    def forward(self, x):
        if not self.training:
            return F.batchnorm_eval_forward(
                x, self.weight.data, self.bias.data, self.running_mean, self.running_var, self.eps
            )
        y, cache, mean, var = F.batchnorm_train_forward(
            x, self.weight.data, self.bias.data, self.eps, self.reduce_sums
        )
        self.update_running_stats(mean, var, self.batch_count(x))
        self._keep(cache)
        return y

    def batch_count(self, x):
        """Values per channel of the batch x (N, C, ...), over every rank under sync-BN."""
        return F.sums_over_ranks(self.reduce_sums, (), x.size // x.shape[1])[1]

    def update_running_stats(self, mean, var, count):
        """Fold one batch's ``mean`` and biased ``var`` (C,), taken over ``count`` values per
        channel, into the running statistics (the variance unbiased, as PyTorch does)."""
        mom = self.momentum
        s = self.running_mean.dtype.type
        backend.fuse(_running_update)(
            self.running_mean, self.running_var, mean, var, s(1.0 - mom), s(mom), s(mom * count / max(count - 1, 1))
        )
        self.count_batch()

    def count_batch(self):
        """num_batches_tracked += 1, unless a model counts every BatchNorm's batches at once
        (``share_batch_counters``)."""
        if self.counted_by is None:
            self.num_batches_tracked += 1

    def backward(self, dy):
        dx, dgamma, dbeta = F.batchnorm_backward(dy, self._take_cache(), self.reduce_sums)
        self.weight.grad += dgamma
        self.bias.grad += dbeta
        return dx

    def extra_repr(self):
        return f"{self.weight.shape[0]}, eps={self.eps}, momentum={self.momentum}"


class BatchCounters:
    """Every BatchNorm2d's ``num_batches_tracked`` of a model as views of one int64 array,
    counted up at once by ``count()`` where the model's training-mode forward begins (one
    launch on a GPU, instead of one per layer). Every BatchNorm of a model runs once per forward,
    so all of them count alike."""

    def __init__(self, model):
        self.layers = [m for m in model.modules() if isinstance(m, BatchNorm2d)]
        xp = backend.xp() if not self.layers else backend.get_array_module(self.layers[0].running_mean)
        self.counts = xp.zeros(len(self.layers), dtype=numpy.int64)
        for i, bn in enumerate(self.layers):
            view = self.counts[i : i + 1].reshape(())
            view[...] = bn.num_batches_tracked
            bn.register_buffer("num_batches_tracked", view)
            object.__setattr__(bn, "counted_by", self)

    def count(self):
        if self.layers:
            self.counts += 1


class ReLU(_Cached):
    """Elementwise max(x, 0); any shape."""

    def forward(self, x):
        y, cache = F.relu_forward(x)
        self._keep(cache)
        return y

    def backward(self, dy):
        return F.relu_backward(dy, self._take_cache())


class MaxPool2d(_Cached):
    """x: (N, C, H, W) -> (N, C, Ho, Wo); stride defaults to kernel_size; padding pads -inf.

    ``ties``: where a window's gradient goes when its maximum occurs more than once: "first"
    (the first in row-major order, as PyTorch) or "share" (every tied maximum takes all of it);
    see ``xpnet.functional.pooling``.
    """

    def __init__(self, kernel_size, stride=None, padding=0, ties="first"):
        super().__init__()
        if ties not in F.MAXPOOL_TIES:
            raise ValueError(f"ties must be one of {F.MAXPOOL_TIES}, got {ties!r}")
        self.kernel_size = _pair(kernel_size)
        self.stride = self.kernel_size if stride is None else _pair(stride)
        self.padding = _pair(padding)
        self.ties = ties

    def forward(self, x):
        y, cache = F.maxpool2d_forward(x, self.kernel_size, self.stride, self.padding, self.ties)
        self._keep(cache)
        return y

    def backward(self, dy):
        return F.maxpool2d_backward(dy, self._take_cache())

    def extra_repr(self):
        ties = "" if self.ties == "first" else f", ties={self.ties!r}"
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}{ties}"


class AvgPool2d(_Cached):
    """x: (N, C, H, W) -> (N, C, Ho, Wo), window means; stride defaults to kernel_size."""

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = self.kernel_size if stride is None else _pair(stride)

    def forward(self, x):
        y, cache = F.avgpool2d_forward(x, self.kernel_size, self.stride)
        self._keep(cache)
        return y

    def backward(self, dy):
        return F.avgpool2d_backward(dy, self._take_cache())

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class GlobalAvgPool2d(_Cached):
    """x: (N, C, H, W) -> (N, C, 1, 1), the mean over all pixels (``AdaptiveAvgPool2d(1)``)."""

    def forward(self, x):
        y, cache = F.global_avgpool_forward(x)
        self._keep(cache)
        return y

    def backward(self, dy):
        return F.global_avgpool_backward(dy, self._take_cache())


class Dropout(_Cached):
    """Inverted dropout with drop probability ``p``: any shape; the identity in eval mode.

    ``rng`` is the host generator the masks are drawn from; share the training loop's generator
    so one saved state resumes a run exactly.

    ``draw_rows``: None, or the hook that draws the samples of a data-parallel rank's rows of the
    global batch (``xpnet.distributed`` sets it), taking ``backend.uniform``'s arguments.
    """

    draw_rows = None

    def __init__(self, p=0.5, rng=None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = float(p)
        object.__setattr__(self, "rng", numpy.random.default_rng() if rng is None else rng)
        # On a GPU, a device scalar that holds the next mask's seed (``load_seed``) in place of a
        # draw inside forward: what a replayed CUDA graph reads.
        object.__setattr__(self, "device_seed", None)

    def load_seed(self):
        """Draw the next forward's seed from ``rng`` into ``device_seed`` (made on first use)."""
        xp = backend.xp()
        if self.device_seed is None:
            object.__setattr__(self, "device_seed", xp.zeros((), dtype=numpy.uint64))
        self.device_seed[...] = xp.asarray(backend.draw_seed(self.rng))

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._keep(None)
            return x
        draw = backend.uniform if self.draw_rows is None else self.draw_rows
        u = draw(self.rng, x.shape, x.dtype, seed=self.device_seed)
        y, mask = F.dropout_forward(x, self.p, u)
        self._keep(mask)
        return y

    def backward(self, dy):
        mask = self._cache
        object.__setattr__(self, "_cache", None)
        return dy if mask is None else F.dropout_backward(dy, mask)

    def extra_repr(self):
        return f"p={self.p}"


class Linear(_Cached):
    """x: (N, in_features) -> (N, out_features); weight (out, in)."""

    def __init__(self, in_features, out_features, bias=True, rng=None):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = _uniform_param(rng, (out_features, in_features), bound)
        self.bias = _uniform_param(rng, (out_features,), bound) if bias else None

    def forward(self, x):
        b = None if self.bias is None else self.bias.data
        y, cache = F.linear_forward(x, self.weight.data, b)
        self._keep(cache)
        return y

    def backward(self, dy):
        # Written straight into .grad after zero_grad (one launch less each on a GPU), else added.
        dw_out = self.weight.grad if self.weight.take_zeroed() else None
        db_out = self.bias.grad if self.bias is not None and self.bias.take_zeroed() else None
        dx, dw, db = F.linear_backward(dy, self._take_cache(), self.bias is not None, dw_out, db_out)
        if dw is not dw_out:
            self.weight.grad += dw
        if self.bias is not None and db is not db_out:
            self.bias.grad += db
        return dx

    def extra_repr(self):
        o, i = self.weight.shape
        return f"in_features={i}, out_features={o}, bias={self.bias is not None}"


class Flatten(_Cached):
    """x: (N, d1, d2, ...) -> (N, d1*d2*...), in C order over the NCHW axes as in PyTorch."""

    def forward(self, x):
        self._keep(x.shape)
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._take_cache())


class Scale(_Cached):
    """x: any shape -> ``factor`` * x, a fixed multiplier; backward: ``factor`` * dy.

    ResNet-9's ``logit_scale`` puts one after the classifier: logits scaled by 1/8 (as in
    Myrtle's DAWNBench ResNet-9) soften the softmax early in training, which a one-epoch run
    feels (docs/results.md).
    """

    def __init__(self, factor):
        super().__init__()
        self.factor = float(factor)

    def forward(self, x):
        self._keep(True)
        return x * self.factor

    def backward(self, dy):
        self._take_cache()
        return dy * self.factor

    def extra_repr(self):
        return f"factor={self.factor:g}"


class CrossEntropyLoss:
    """Mean softmax cross-entropy over a batch; ``label_smoothing`` as in PyTorch.

    ``forward(logits (N, K), labels (N,)) -> float``; ``backward() -> dlogits (N, K)``.
    """

    def __init__(self, label_smoothing=0.0):
        self.label_smoothing = float(label_smoothing)
        self._cache = self._hits = None
        self._bad_labels = None  # on a GPU: out-of-range labels seen since the last check

    def forward(self, logits, labels):
        if backend.get_array_module(logits, labels) is numpy:
            loss, self._cache = F.cross_entropy_forward(logits, labels, self.label_smoothing)
            self._hits = None
            return loss
        return float(self.forward_sums(logits, labels)[0]) / logits.shape[0]

    def forward_sums(self, logits, labels):
        """The device form of ``forward``, with no host read -> a (3,) device array: the summed
        loss, the hits (see ``hits``) and the out-of-range labels of this batch."""
        sums, self._cache = F.cross_entropy_sums(logits, labels, self.label_smoothing)
        self._hits = (logits, sums[1])
        # A view of the sums the loss kernel already made; added up in place, read once an epoch.
        if self._bad_labels is None:
            self._bad_labels = sums[2:].copy()
        else:
            self._bad_labels += sums[2:]
        return sums

    def out_of_range_labels(self) -> int:
        """How many labels outside [0, K) reached ``forward`` on a GPU since the last call, where
        they get no one-hot target (NumPy labels are checked in ``forward`` itself). Reads one
        device count, a host sync: call it where the loop reads the device anyway, once an epoch."""
        if self._bad_labels is None:
            return 0
        bad = int(self._bad_labels[0])
        # Zeroed in place, not dropped: a CUDA graph that replays forward_sums adds into it.
        self._bad_labels.fill(0)
        return bad

    def hits(self, logits, labels):
        """The number of rows of ``logits`` (N, K) whose largest logit (the first, on ties) is the
        label's, as a 0-d array on their backend: on a GPU the count the forward pass of these
        logits already made (no launch)."""
        if self._hits is not None and self._hits[0] is logits:
            return self._hits[1]
        return (logits.argmax(axis=1) == labels).sum()

    __call__ = forward

    def backward(self, scale=1.0):
        """-> the gradient of ``scale`` times the mean loss (data-parallel ranks scale theirs by
        their share of the global batch)."""
        if self._cache is None:
            raise RuntimeError("CrossEntropyLoss.backward called without a forward pass")
        cache, self._cache = self._cache, None
        return F.cross_entropy_backward(cache, scale)
