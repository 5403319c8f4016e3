"""Conv3x3(stride 1, padding 1) + BatchNorm + ReLU [+ MaxPool2d(2, 2)] as one operation.

The same math as running ``conv2d``, ``batchnorm``, ``relu`` and ``maxpool2d`` one after the
other, reorganised so each large array is read and written as few times as possible, a few images
at a time while they are in cache, the chunks spread over threads (``parallel``). The convolution
itself is a plan chosen per shape (``conv3x3_method``): Winograd F(2x2, 3x3) (``winograd``) or
im2col + GEMM (``conv.Im2col3x3``), both with the same chunk-wise forward, weight-gradient and
input-gradient steps.

* Forward (training): the convolution leaves out its bias, which training-mode BatchNorm cancels
  (it only shifts the batch mean, so it enters the running mean alone), and sums each output
  channel and its square while a GEMM chunk is still in cache; those sums are the batch
  statistics. Each chunk sums its deviations from its own mean ``a`` (sum z = sum d + r a,
  sum z^2 = sum d^2 + 2a sum d + r a^2, combined in float64): raw float32 sums of z^2 lose the
  variance to cancellation where a channel's mean is large against its spread. Then normalise +
  ReLU + pool run in small chunks.
* Backward: the ReLU/pool mask is rebuilt from the output ``y`` and pooled ``p`` (a window's
  gradient goes to the first position equal to its maximum, and only where that maximum is
  positive), so no index array is stored. A pooled block on the CPU does not even keep ``y``:
  the backward remakes it, chunk by chunk, from ``z`` and BatchNorm's scale and shift.
  BatchNorm's backward becomes ``dz = a*g + b*z + c`` with per-channel a, b, c, formed chunk by
  chunk just before that chunk's weight and input gradients. Its sum of g*z is taken around the
  batch mean, sum g*(z - mean), for the same reason.
* Forward (eval): BatchNorm folds into the convolution's weights and one per-channel shift.
* Synchronised BatchNorm over data-parallel ranks: the four per-channel sums above (sum z and
  sum z^2 in the forward, sum g and sum g*z in the backward) and the count go through the
  ``reduce_sums`` hook of ``normalization.sums_over_ranks`` between the two passes, the one
  place where a chunk loop's partial sums meet; nothing else changes.

Arrays are NCHW-shaped, channels-last in memory, like the rest of ``xpnet.functional``. Pooling
is floor-mode: odd edge rows and columns belong to no window and get no gradient.

This module holds the public functions and their CPU body, as Chainer's ``forward_cpu``; each
public function hands device arrays at once to the GPU body, ``fused_device`` (the same math laid
out around kernel launches). What both share, the plan's choice and the argument checks, is here.
"""

from __future__ import annotations

import numpy

from xpnet.backend import get_array_module
from xpnet.functional import fused_device, jit
from xpnet.functional.conv import Im2col3x3
from xpnet.functional.layout import nchw, nhwc
from xpnet.functional.normalization import sums_over_ranks
from xpnet.functional.parallel import chunk_size, for_chunks, workers
from xpnet.functional.winograd import Winograd3x3
from xpnet.functional.winograd4 import Winograd4x4
from xpnet.functional.workspace import Workspace

# The 3x3 convolutions run a few images at a time, so their scratch (about this size) stays in
# cache while the GEMMs read it. 3 MiB rather than 4: the same speed within the noise at batch
# 8-128 and width 0.25 and 1 (AMD EPYC, 2 cores, benchmarks/tools/ab.py), and at batch 8 one
# image per chunk of the 28x28 layer, which keeps a width-1 step's peak memory under PyTorch's.
COL_CHUNK_BYTES = 3 << 20
# Winograd from this many channels (in and out) and this image size up; "auto" chooses by these.
WINOGRAD_MIN_CHANNELS = 32
WINOGRAD_MIN_SIZE = 6
# F(4x4, 3x3) from this many channels (in and out) and this image size up, where the compiled
# transforms are there (``jit``); with NumPy passes only, F(2x2, 3x3) by the two above. From 16
# channels: at width 0.25 (conv2's 16 -> 32 channels included) a train step ran 1.05-1.36x faster
# than with F(4x4, 3x3) from 64 channels only, and at width 1.0 every Winograd layer has 64 or
# more (benchmarks/tools/ab.py --clock cpu, one thread, Intel Xeon, 2026-12-03).
WINOGRAD4_MIN_CHANNELS = 16
WINOGRAD4_MIN_SIZE = 6
CONV3X3_METHOD = "auto"

# Elementwise passes work on chunks this size, small enough to stay in L2 (1 MiB per core on the
# AMD EPYC machines, where 256 KiB chunks, four times the NumPy calls, made a width-0.25 train
# step about 3 % slower: benchmarks/tools/ab.py).
ELEMENTWISE_CHUNK_BYTES = 1 << 20


# The per-channel sums are float64 on the CPU, where it costs little and keeps the statistics of
# large batches exact (the device body keeps float32, where float64 runs at a fraction of the rate).
SUM_DTYPE = numpy.float64


class _ColumnSums:
    """Sums over the rows of (R, O) chunks, each thread's kept apart in float64 and combined in
    thread order (so a fixed thread count gives the same bits every run): a GEMV with the
    caller's ``ones`` vector, faster than sum(axis=0), more accurate (BLAS keeps several partial
    sums), and no temporary."""

    def __init__(self, threads, ones):
        self.ones = ones
        self.parts = [None] * threads

    def add(self, t, a):
        """Add the column sums of a (R, O) from thread t."""
        self.accumulate(t, self.ones[: a.shape[0]] @ a)

    def accumulate(self, t, v):
        """Add the (O,) vector v, already summed over thread t's rows."""
        v = v.astype(SUM_DTYPE, copy=False)
        if self.parts[t] is None:
            self.parts[t] = v
        else:
            numpy.add(self.parts[t], v, out=self.parts[t])

    def total(self):
        """(O,) float64."""
        parts = [p for p in self.parts if p is not None]
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        return total


def _bn_stats(s1, s2, gamma, beta, m, eps):
    """Per-channel sums of z and z^2 over m values -> mean, biased var, 1/std, and the scale and
    shift (gamma's dtype) that normalise and apply gamma, beta."""
    mean = s1 / m
    var = numpy.maximum(s2 / m - mean * mean, 0.0)
    inv_std = 1.0 / numpy.sqrt(var + eps)
    scale = (gamma * inv_std).astype(gamma.dtype)
    shift = (beta - mean * scale).astype(gamma.dtype)
    return mean, var, inv_std, scale, shift


def _uncentered(a, sd, sdd, r):
    """A chunk's r rows summed around their column means a -> the plain sums of z and z^2:
    sum z = r a + sum d, sum z^2 = sum d^2 + a (2 sum d + r a)."""
    return r * a + sd, sdd + a * (sd + sd + r * a)


def _bn_backward_coefficients(sg, sgc, sgc_own, mean, inv_std, gamma, m):
    """sum(g), sum(g*(z - mean)) (O,) over all m values, and this rank's own sum(g*(z - mean))
    -> dgamma (this rank's share) and the a, b, c of dz = a*g + b*z + c."""
    inv = inv_std.astype(sg.dtype)
    mean = mean.astype(sg.dtype)
    dgamma = inv * sgc
    k = gamma.astype(sg.dtype) * inv
    ca = k.astype(gamma.dtype)
    cb = (-k * inv * dgamma / m).astype(gamma.dtype)
    cc = (k * (mean * inv * dgamma - sg) / m).astype(gamma.dtype)
    return inv * sgc_own, ca, cb, cc


def _check(x, w):
    o, c, kh, kw = w.shape
    if (kh, kw) != (3, 3):
        raise ValueError(f"fused conv block: expects a 3x3 kernel, got {kh}x{kw}")
    if x.shape[1] != c:
        raise ValueError(f"fused conv block: input has {x.shape[1]} channels, weight expects {c}")


def _pool2_into(y, p):
    """p <- 2x2 stride-2 max of y; y: (n, H, W, C), p: (n, H//2, W//2, C)."""
    xp = get_array_module(y)
    ho, wo = p.shape[1], p.shape[2]
    a = y[:, : 2 * ho, : 2 * wo]
    xp.maximum(a[:, 0::2, 0::2], a[:, 0::2, 1::2], out=p)
    xp.maximum(p, a[:, 1::2, 0::2], out=p)
    xp.maximum(p, a[:, 1::2, 1::2], out=p)


def _affine_relu_pool(z, scale, shift, y, p, ws):
    """y <- relu(z * scale + shift) (z and y may be the same array); p <- maxpool2(y) if p.
    With y None, each chunk's y is scratch from workspace ``ws``, and only p is kept."""
    xp = get_array_module(z)
    n, h, w, c = z.shape
    nb = chunk_size(xp, n, h * w * c * z.itemsize, ELEMENTWISE_CHUNK_BYTES)
    relu, relu_pool = jit.kernel("bn_affine_relu"), jit.kernel("bn_affine_relu_pool")

    def body(t, n0, n1):
        if relu is not None and p is None:  # one compiled pass
            relu(z[n0:n1].reshape(-1, c), scale, shift, y[n0:n1].reshape(-1, c))
            return
        if relu_pool is not None and y is None:
            relu_pool(z[n0:n1], scale, shift, p[n0:n1])
            return
        yc = y[n0:n1] if y is not None else ws.get(xp, f"bz.{t}", (nb, h, w, c), z.dtype)[: n1 - n0]
        xp.multiply(z[n0:n1], scale, out=yc)
        xp.add(yc, shift, out=yc)
        xp.maximum(yc, 0.0, out=yc)
        if p is not None:
            _pool2_into(yc, p[n0:n1])

    for_chunks(xp, n, nb, body)


def conv3x3_method(h, w, c, o):
    """The convolution algorithm for an (H, W) image with C -> O channels.

    Winograd F(2x2, 3x3) does 2.25x fewer multiplications, but its 16 GEMMs have only C as their
    inner dimension and its transforms cost a few passes over 4x the data, so it pays only with
    enough channels and tiles. F(4x4, 3x3) does 4x fewer, with 36 GEMMs on 2.25x the data; its
    transforms pay only as compiled loops (``jit``), so without them the layer keeps F(2x2, 3x3).
    The CPU's choice lives here alone (the device chooses its own, in ``fused_device``);
    ``CONV3X3_METHOD`` forces one method ("im2col", "winograd" or "winograd4").
    """
    if CONV3X3_METHOD != "auto":
        return {"im2col": Im2col3x3, "winograd": Winograd3x3, "winograd4": Winograd4x4}[CONV3X3_METHOD]
    if jit.enabled() and min(c, o) >= WINOGRAD4_MIN_CHANNELS and min(h, w) >= WINOGRAD4_MIN_SIZE:
        return Winograd4x4
    if min(c, o) >= WINOGRAD_MIN_CHANNELS and min(h, w) >= WINOGRAD_MIN_SIZE:
        return Winograd3x3
    return Im2col3x3


def _plan(xp, n, h, w, c, o, dtype, ws):
    method = conv3x3_method(h, w, c, o)
    nb = chunk_size(xp, n, method.image_bytes(h, w, c, o, numpy.dtype(dtype).itemsize), COL_CHUNK_BYTES)
    if method is Im2col3x3:
        return method(h, w, c, o, nb, ws, dtype, n=n)
    return method(h, w, c, o, nb, ws, dtype)


def conv_bn_relu_train_forward(x, w, gamma, beta, eps=1e-5, pool=False, ws=None, reduce_sums=None):
    """Training-mode forward with batch statistics (over every rank with ``reduce_sums``).

    x: (N, C, H, W); w: (O, C, 3, 3); gamma, beta: (O,).
    Returns (out, cache, mean, var): out (N, O, H, W), or (N, O, H//2, W//2) with ``pool``;
    ``mean`` and the biased ``var`` (O,) are the statistics of the bias-free convolution, so the
    caller adds the conv bias to ``mean`` for its running average. ``cache`` refers to ``x`` and
    ``w`` themselves: change neither in place before the backward pass.
    """
    xp = get_array_module(x, w, gamma, beta)
    _check(x, w)
    ws = Workspace() if ws is None else ws
    if xp is not numpy:
        return fused_device.train_forward(x, w, gamma, beta, eps, pool, ws, reduce_sums)
    return _train_forward_cpu(x, w, gamma, beta, eps, pool, ws, reduce_sums)


def _train_forward_cpu(x, w, gamma, beta, eps, pool, ws, reduce_sums):
    xh = nhwc(x)
    n, h, wd, c = xh.shape
    o = w.shape[0]
    dt = w.dtype
    plan = _plan(numpy, n, h, wd, c, o, dt, ws)
    wk = plan.weights(w)
    ones = numpy.ones(plan.nb * h * wd, dtype=dt)
    z = numpy.empty((n, h, wd, o), dtype=dt)
    # y is the output (without pooling) and until then holds each chunk's deviations. A pooled
    # block keeps only its pooled output: its y lives a chunk at a time in scratch, and the
    # backward pass remakes it from z.
    y = None if pool else numpy.empty_like(z)
    s1, s2 = (_ColumnSums(workers(numpy), ones) for _ in range(2))
    centered_sums = jit.kernel("bn_centered_sums")

    def body(t, n0, n1):
        plan.forward_into(xh, n0, n1, wk, z[n0:n1], t)
        r = (n1 - n0) * h * wd
        zc = z[n0:n1].reshape(r, o)
        if centered_sums is not None:  # the same sums in one compiled pass, in float64
            a_sd_sdd = numpy.empty((3, o), dtype=SUM_DTYPE)
            centered_sums(zc, a_sd_sdd)
            part1, part2 = _uncentered(*a_sd_sdd, float(r))
            s1.accumulate(t, part1)
            s2.accumulate(t, part2)
            return
        # Sums around the chunk's own mean a (d = z - a): raw float32 sums of z^2 lose the
        # variance to cancellation, and to drift over a flat image background.
        a = (ones[:r] @ zc) * (1.0 / r)
        d = y[n0:n1].reshape(r, o) if y is not None else ws.get(numpy, f"bz.{t}", (plan.nb * h * wd, o), dt)[:r]
        numpy.subtract(zc, a, out=d)
        sd = ones[:r] @ d
        numpy.multiply(d, d, out=d)
        sdd = ones[:r] @ d
        part1, part2 = _uncentered(*(v.astype(SUM_DTYPE) for v in (a, sd, sdd)), float(r))
        s1.accumulate(t, part1)
        s2.accumulate(t, part2)

    for_chunks(numpy, n, plan.nb, body)
    (s1, s2), m = sums_over_ranks(reduce_sums, (s1.total(), s2.total()), n * h * wd)
    mean, var, inv_std, scale, shift = _bn_stats(s1, s2, gamma, beta, float(m), float(eps))
    p = numpy.empty((n, h // 2, wd // 2, o), dtype=dt) if pool else None
    _affine_relu_pool(z, scale, shift, y, p, ws)
    mean, var, inv_std = (a.astype(dt, copy=False) for a in (mean, var, inv_std))
    # The weights, not their plan form: the backward remakes that only if it needs the input
    # gradient, so the tap matrices of every layer are not held at once between the passes.
    cache = (x, w, gamma, z, y, p, mean, inv_std, scale, shift)
    return nchw(y if p is None else p), cache, mean, var


def conv_bn_relu_eval_forward(x, w, b, gamma, beta, running_mean, running_var, eps=1e-5, pool=False, ws=None):
    """Eval-mode forward with running statistics folded into the weights.

    x: (N, C, H, W); w: (O, C, 3, 3); b: (O,) or None; the rest (O,).
    Returns out: (N, O, H, W), or (N, O, H//2, W//2) with ``pool``.
    """
    xp = get_array_module(x, w, gamma, beta)
    _check(x, w)
    ws = Workspace() if ws is None else ws
    if xp is not numpy:
        return fused_device.eval_forward(x, w, b, gamma, beta, running_mean, running_var, eps, pool, ws)
    xh = nhwc(x)
    n, h, wd, c = xh.shape
    o = w.shape[0]
    dt = w.dtype
    scale = gamma / numpy.sqrt(running_var + eps)
    shift = beta - running_mean * scale
    if b is not None:
        shift = shift + b * scale
    plan = _plan(numpy, n, h, wd, c, o, dt, ws)
    wk = plan.weights(w * scale.reshape(o, 1, 1, 1))
    # With pooling only p is kept: each chunk's convolution goes to scratch and is pooled
    # before the shift and the ReLU, which commute with the max exactly (rounding is monotonic),
    # so they run on a quarter of the values.
    y = None if pool else numpy.empty((n, h, wd, o), dtype=dt)
    p = numpy.empty((n, h // 2, wd // 2, o), dtype=dt) if pool else None

    def body(t, n0, n1):
        if p is None:
            out = y[n0:n1]
            plan.forward_into(xh, n0, n1, wk, out, t)
        else:
            yc = ws.get(numpy, f"bz.{t}", (plan.nb, h, wd, o), dt)[: n1 - n0]
            plan.forward_into(xh, n0, n1, wk, yc, t)
            out = p[n0:n1]
            _pool2_into(yc, out)
        numpy.add(out, shift, out=out)
        numpy.maximum(out, 0.0, out=out)

    for_chunks(numpy, n, plan.nb, body)
    return nchw(y if p is None else p)


def _relu_pool_grad_into(dout, y, p, g, free, hit):
    """g <- gradient at the ReLU's input, given dout at the block's output (one chunk).

    Without pooling g = dout where y > 0. With pooling each window's gradient goes to its first
    position (row-major, as PyTorch) equal to the pooled maximum, if that maximum is positive;
    ``free`` and ``hit`` are bool scratch of p's shape.
    """
    if p is None:
        numpy.greater(y, 0.0, out=hit)
        numpy.multiply(dout, hit, out=g)
        return
    ho, wo = p.shape[1], p.shape[2]
    if 2 * ho != g.shape[1]:
        g[:, 2 * ho :] = 0.0
    if 2 * wo != g.shape[2]:
        g[:, :, 2 * wo :] = 0.0
    numpy.greater(p, 0.0, out=free)
    for t, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        numpy.equal(y[:, a : 2 * ho : 2, b : 2 * wo : 2], p, out=hit)
        numpy.logical_and(hit, free, out=hit)
        if t < 3:
            numpy.logical_xor(free, hit, out=free)
        numpy.multiply(dout, hit, out=g[:, a : 2 * ho : 2, b : 2 * wo : 2])


def conv_bn_relu_backward(dout, cache, need_dx=True, ws=None, reduce_sums=None):
    """dout: gradient of the training-mode forward's output.

    Returns (dx: (N, C, H, W) or None, dw: (O, C, 3, 3), db: (O,), dgamma: (O,), dbeta: (O,)).
    ``db`` is the conv bias gradient, zero up to rounding since BatchNorm follows. With
    ``reduce_sums`` (as in the forward) dz and dx use the sums over every rank, and the parameter
    gradients are this rank's share.
    """
    xp = get_array_module(dout, cache[3])
    ws = Workspace() if ws is None else ws
    if xp is not numpy:
        w = cache[1]
        grads = (xp.empty_like(w), xp.zeros(w.shape[0], dtype=w.dtype), xp.zeros(w.shape[0], dtype=w.dtype))
        dx = fused_device.backward(dout, cache, grads, True, need_dx, ws, reduce_sums)
        return dx, grads[0], xp.zeros_like(grads[1]), grads[1], grads[2]
    x, w, gamma, z, _, _, mean, inv_std, _, _ = cache
    n, h, wd, o = z.shape
    plan = _plan(numpy, n, h, wd, x.shape[1], o, z.dtype, ws)
    nb = chunk_size(numpy, n, h * wd * o * z.itemsize, ELEMENTWISE_CHUNK_BYTES)
    ones = numpy.ones(max(nb, plan.nb) * h * wd, dtype=z.dtype)
    # Pass 1: g (the ReLU input's gradient) and its per-channel sums sum(g), sum(g * (z - mean)).
    g, sg, sgz = _relu_grad_sums(nhwc(dout), cache, nb, ones, ws)
    (sg_all, sgz_all), m = sums_over_ranks(reduce_sums, (sg, sgz), n * h * wd)
    # BatchNorm's backward, dz = gamma*inv_std*(g - mean(g) - xhat*mean(g*xhat)), as a*g + b*z + c.
    dgamma, *coefficients = _bn_backward_coefficients(sg_all, sgz_all, sgz, mean, inv_std, gamma, float(m))
    # Pass 2, per chunk of images: dz in place of g, then this chunk's share of dW and dx.
    dx, dw, db = _dz_and_conv_grads(nhwc(x), w, z, g, coefficients, plan, ones, need_dx, ws)
    dt = z.dtype
    return dx, dw, db.astype(dt, copy=False), dgamma.astype(dt, copy=False), sg.astype(dt, copy=False)


def _relu_grad_sums(douth, cache, nb, ones, ws):
    """Backward pass 1, chunk by chunk: g (N, H, W, O), the gradient at the ReLU's input, and
    its per-channel sums sum(g), sum(g * (z - mean)) (O,) float64."""
    _, _, _, z, y, p, mean, _, scale, shift = cache
    n, h, wd, o = z.shape
    g = numpy.empty_like(z)
    sg, sgz = (_ColumnSums(workers(numpy), ones) for _ in range(2))
    mask_shape = (nb, h // 2, wd // 2, o) if p is not None else (nb, h, wd, o)
    relu_grad = jit.kernel("bn_relu_grad_sums" if p is None else "bn_pool_relu_grad_sums")

    def body(t, n0, n1):
        k, r = n1 - n0, (n1 - n0) * h * wd
        if relu_grad is not None:  # g and both sums in one compiled pass
            sums = numpy.zeros((2, o), dtype=SUM_DTYPE)
            if p is None:
                relu_grad(douth[n0:n1].reshape(r, o), y[n0:n1].reshape(r, o), z[n0:n1].reshape(r, o), mean,
                          g[n0:n1].reshape(r, o), sums)
            else:
                relu_grad(douth[n0:n1], p[n0:n1], z[n0:n1], scale, shift, mean, g[n0:n1], sums)
            sg.accumulate(t, sums[0])
            sgz.accumulate(t, sums[1])
            return
        free = ws.get(numpy, f"free.{t}", mask_shape, bool)[:k]
        hit = ws.get(numpy, f"hit.{t}", mask_shape, bool)[:k]
        if y is None:
            # The forward kept no y: remake it in g, without the ReLU, which changes nothing
            # where the pooled maximum is positive, the only place the mask looks. The mask then
            # reads each window position of g before it writes that position's gradient.
            yc = g[n0:n1]
            numpy.multiply(z[n0:n1], scale, out=yc)
            numpy.add(yc, shift, out=yc)
        else:
            yc = y[n0:n1]
        _relu_pool_grad_into(douth[n0:n1], yc, None if p is None else p[n0:n1], g[n0:n1], free, hit)
        gc = g[n0:n1].reshape(r, o)
        sg.add(t, gc)
        gzc = ws.get(numpy, f"bz.{t}", (nb * h * wd, o), z.dtype)[:r]  # pass 2's scratch, free until then
        numpy.subtract(z[n0:n1].reshape(r, o), mean, out=gzc)
        numpy.multiply(gzc, gc, out=gzc)
        sgz.add(t, gzc)

    for_chunks(numpy, n, nb, body)
    return g, sg.total(), sgz.total()


def _dz_and_conv_grads(xh, w, z, g, coefficients, plan, ones, need_dx, ws):
    """Backward pass 2, chunk by chunk: dz = a*g + b*z + c in place of g, then each chunk's share
    of dW and dx. -> (dx (N, C, H, W) or None, dw (O, C, 3, 3), db (O,) float64)."""
    ca, cb, cc = coefficients
    n, h, wd, o = z.shape
    nt, nb, dt = workers(numpy), plan.nb, z.dtype
    db = _ColumnSums(nt, ones)
    dws = numpy.empty((nt, *plan.dw_shape), dtype=dt)  # per-thread partial weight gradients
    started = [False] * nt
    parts = [None] * nt
    dx = numpy.empty((n, h, wd, xh.shape[3]), dtype=dt) if need_dx else None
    wk = plan.weights(w) if need_dx else None
    input_grad = jit.kernel("bn_input_grad")

    def body(t, n0, n1):
        r = (n1 - n0) * h * wd
        dz = g[n0:n1].reshape(r, o)
        if input_grad is not None:  # dz and its sum in one compiled pass
            sums = numpy.zeros(o, dtype=SUM_DTYPE)
            input_grad(dz, z[n0:n1].reshape(r, o), ca, cb, cc, sums)
            db.accumulate(t, sums)
        else:
            bz = ws.get(numpy, f"bz.{t}", (nb * h * wd, o), dt)
            numpy.multiply(z[n0:n1].reshape(r, o), cb, out=bz[:r])
            numpy.multiply(dz, ca, out=dz)
            numpy.add(dz, bz[:r], out=dz)
            numpy.add(dz, cc, out=dz)
            db.add(t, dz)
        # A thread's later chunks add into its first one's result, through scratch of this call
        # (a workspace buffer would hold the largest layer's weight gradient per thread for good).
        if not started[t]:
            part = dws[t]
        else:
            part = parts[t] = numpy.empty(plan.dw_shape, dtype=dt) if parts[t] is None else parts[t]
        plan.backward_into(xh, g[n0:n1], n0, n1, wk, part, None if dx is None else dx[n0:n1], t)
        if started[t]:
            dws[t] += part
        started[t] = True

    for_chunks(numpy, n, nb, body)
    used = [t for t in range(nt) if started[t]]
    dwmat = dws[used[0]]
    for t in used[1:]:
        dwmat += dws[t]
    return None if dx is None else nchw(dx), plan.dw_finish(dwmat), db.total()
