"""The fused conv3x3 + BatchNorm + ReLU [+ MaxPool2d(2, 2)] block on a GPU, in as few launches
as the math allows.

The same math as ``fused`` (whose docstring states it); this is its device body. On a GPU the
whole batch is one chunk, and what a step costs at small batches is the number of kernel
launches, not the arithmetic, so the body is laid out around launches:

* The convolution is im2col + one GEMM with channel-major columns, (channel, tap_i, tap_j), the
  order of a PyTorch-layout weight seen as (O, 9C): the weight matrix and its gradient are
  views, and the columns are one gather (``take``) from a zero-bordered copy of the input.
  Winograd's transforms would add 10 launches forward and 22 backward per layer to save
  multiplications a GPU does not wait for at these sizes.
* BatchNorm's statistics are one reduction: the sums of d and d^2 with d = z - a, a = z's first
  row (any value near the mean keeps the variance clear of cancellation; a sample of the data is
  one), taken together as the real and imaginary parts of one complex sum. One finishing kernel
  turns them into the scale and shift and folds the batch into the running statistics (with the
  conv bias, which the batch statistics leave out).
* Normalise + ReLU [+ pool] is one kernel. A pooled block keeps only z and the pooled output; its
  backward remakes the window values from z.
* Backward: one reduction gives sum(g) and sum(g*(z - mean)) (complex again), with the ReLU/pool
  mask g made inline; one kernel writes dz = a*g + b*z + c with the coefficients made inline
  from those sums; one per-channel kernel adds dgamma and dbeta into the parameters' gradients
  (the conv bias's gradient, sum(dz), is zero: BatchNorm cancels any shift of z). dW is one GEMM,
  written straight into the weight's gradient after ``zero_grad``; dx is one GEMM, a gather and a 9-tap sum.

Arrays are NCHW-shaped at the interface, channels-last in memory.
"""

from __future__ import annotations

import numpy

from xpnet import backend
from xpnet.backend import get_array_module
from xpnet.functional.conv import _im2col3x3_index
from xpnet.functional.layout import nchw, nhwc


def _complex(dtype):
    """The imaginary unit in the complex type of ``dtype`` (complex64 for float32)."""
    return numpy.result_type(dtype, numpy.complex64).type(1j)


# -- the elementwise and reduction steps, one kernel each through ``backend.fuse`` ------------


def _shifted_sums(z, a, j):
    """z: (M, O), a: (O,) -> sum(d) + j*sum(d*d) over rows, d = z - a: both in one reduction."""
    d = z - a
    return backend.xp().sum(d + d * d * j, axis=0)


def _bn_finish(sd, sdd, a, gamma, beta, m, eps):
    """Shifted sums -> mean, biased var, 1/std, and the scale and shift of normalise + affine."""
    xp = backend.xp()
    dm = sd / m
    mean = a + dm
    var = xp.maximum(sdd / m - dm * dm, eps * eps.dtype.type(0))
    inv_std = eps.dtype.type(1) / xp.sqrt(var + eps)
    scale = gamma * inv_std
    return mean, var, inv_std, scale, beta - mean * scale


def _bn_finish_running(sd, sdd, a, gamma, beta, m, eps, running_mean, running_var, bias, keep, mom, mom_unbiased):
    """``_bn_finish``, also folding the batch into the running statistics in place (the running
    mean is that of the convolution with its ``bias``; the variance is unbiased by the caller's
    ``mom_unbiased``)."""
    mean, var, inv_std, scale, shift = _bn_finish(sd, sdd, a, gamma, beta, m, eps)
    running_mean *= keep
    running_mean += mom * (mean + bias)
    running_var *= keep
    running_var += mom_unbiased * var
    return mean, inv_std, scale, shift


def _affine_relu(z, scale, shift):
    return backend.xp().maximum(z * scale + shift, z.dtype.type(0))


def _affine_relu_pool(z00, z01, z10, z11, scale, shift):
    """The 2x2 max of relu(z * scale + shift) over the four window positions."""
    xp = backend.xp()
    zero = z00.dtype.type(0)
    a = xp.maximum(z00 * scale + shift, zero)
    b = xp.maximum(z01 * scale + shift, zero)
    c = xp.maximum(z10 * scale + shift, zero)
    d = xp.maximum(z11 * scale + shift, zero)
    return xp.maximum(xp.maximum(a, b), xp.maximum(c, d))


def _eval_affine_relu(z, gamma, beta, running_mean, running_var, bias, eps):
    """Eval-mode BatchNorm (+ the conv bias) and ReLU on z, the bias-free convolution: the
    running statistics fold into a per-channel scale and shift made inline."""
    xp = backend.xp()
    scale = gamma / xp.sqrt(running_var + eps)
    return xp.maximum(z * scale + (beta + (bias - running_mean) * scale), z.dtype.type(0))


def _eval_affine_relu_pool(z00, z01, z10, z11, gamma, beta, running_mean, running_var, bias, eps):
    """The same, pooled: the max of the four positions first (a positive scale and the shift
    commute with it; a negative scale turns it into a min)."""
    xp = backend.xp()
    scale = gamma / xp.sqrt(running_var + eps)
    hi = xp.maximum(xp.maximum(z00, z01), xp.maximum(z10, z11))
    lo = xp.minimum(xp.minimum(z00, z01), xp.minimum(z10, z11))
    top = xp.where(scale >= z00.dtype.type(0), hi, lo)
    return xp.maximum(top * scale + (beta + (bias - running_mean) * scale), z00.dtype.type(0))


def _grad_sums(dout, y, z, mean, j):
    """sum(g) + j*sum(g*(z - mean)) over rows, g = dout where y > 0."""
    g = dout * (y > y.dtype.type(0))
    return backend.xp().sum(g + g * (z - mean) * j, axis=0)


def _pool_masks(p00, p01, p10, p11):
    """The 2x2 window's gradient goes to its first position (row-major) equal to its maximum,
    where that maximum is positive -> the four positions' masks."""
    xp = backend.xp()
    top = xp.maximum(xp.maximum(p00, p01), xp.maximum(p10, p11))
    free = top > p00.dtype.type(0)
    h00 = (p00 == top) & free
    free = free ^ h00
    h01 = (p01 == top) & free
    free = free ^ h01
    h10 = (p10 == top) & free
    return h00, h01, h10, (p11 == top) & (free ^ h10)


def _pool_grad_sums(dout, z00, z01, z10, z11, scale, shift, mean, j):
    """sum(g) + j*sum(g*(z - mean)) over a pooled block's windows, g routed by ``_pool_masks``
    from the window values remade from z (the ReLU does not change where the maximum is when
    it is positive, the only place the mask looks)."""
    h00, h01, h10, h11 = _pool_masks(z00 * scale + shift, z01 * scale + shift, z10 * scale + shift, z11 * scale + shift)
    g = dout * h00 + dout * h01 + dout * h10 + dout * h11
    gz = dout * (h00 * (z00 - mean) + h01 * (z01 - mean) + h10 * (z10 - mean) + h11 * (z11 - mean))
    return backend.xp().sum(g + gz * j, axis=(0, 1, 2))


def _dz_coefficients(sg, sgz, mean, inv_std, gamma, m):
    """BatchNorm's backward as dz = ca*g + cb*z + cc, per channel (see ``fused``)."""
    k = gamma * inv_std
    cb = -k * inv_std * inv_std * sgz / m
    return k, cb, -k * sg / m - cb * mean


def _bn_dz_into(dout, y, z, sg, sgz, mean, inv_std, gamma, m, dz):
    ca, cb, cc = _dz_coefficients(sg, sgz, mean, inv_std, gamma, m)
    backend.xp().add(ca * (dout * (y > y.dtype.type(0))) + cb * z, cc, dz)


def _pool_bn_dz_into(dout, z00, z01, z10, z11, scale, shift, sg, sgz, mean, inv_std, gamma, m, d00, d01, d10, d11):
    """dz of a pooled block's windows, written into the four window views of dz."""
    xp = backend.xp()
    ca, cb, cc = _dz_coefficients(sg, sgz, mean, inv_std, gamma, m)
    h00, h01, h10, h11 = _pool_masks(z00 * scale + shift, z01 * scale + shift, z10 * scale + shift, z11 * scale + shift)
    g = ca * dout
    xp.add(g * h00 + cb * z00, cc, d00)
    xp.add(g * h01 + cb * z01, cc, d01)
    xp.add(g * h10 + cb * z10, cc, d10)
    xp.add(g * h11 + cb * z11, cc, d11)


def _edge_dz_into(z, sg, sgz, mean, inv_std, gamma, m, dz):
    """dz where no pooling window reaches (odd edges): g = 0 there."""
    _, cb, cc = _dz_coefficients(sg, sgz, mean, inv_std, gamma, m)
    backend.xp().add(cb * z, cc, dz)


def _param_grads(sg, sgz_own, inv_std, ggamma, gbeta):
    """Adds dgamma (this rank's share) and dbeta into the parameters' gradients."""
    ggamma += inv_std * sgz_own
    gbeta += sg


def _masked_tap_sum(taps, mask):
    """taps: (..., 9) gathered column gradients, mask: 1 where the tap lies inside the image
    -> their sum over the taps."""
    return backend.xp().sum(taps * mask, axis=-1)


# -- the convolution's data movement --------------------------------------------------------


def _cols(xp, xh, ws):
    """xh: (N, H, W, C) -> its channel-major 3x3 columns (N*H*W, 9*C): one copy into a
    zero-bordered buffer, one gather."""
    n, h, w, c = xh.shape
    pad = ws.get(xp, "dev.pad3x3", (n, h + 2, w + 2, c), xh.dtype, zero=True)
    pad[:, 1 : h + 1, 1 : w + 1] = xh
    index = ws.constant(xp, f"im2col3x3.{h}.{w}.{c}.False", numpy.int64, lambda: _im2col3x3_index(h, w, c, False))
    return xp.take(pad.reshape(n, -1), index, axis=1).reshape(n * h * w, 9 * c)


def _col2im_index(h, w, c):
    """(H*W*C*9,) host offsets into one image's channel-major column gradient (H*W, C*9) and
    the matching mask: input pixel (y, x, channel) gets, for tap (i, j), the gradient of output
    pixel (y-i+1, x-j+1) at that tap, where that pixel lies inside the image (elsewhere the
    offset is 0 and the mask 0)."""
    y, x, ch, t = numpy.meshgrid(*(numpy.arange(k) for k in (h, w, c, 9)), indexing="ij")
    yo, xo = y - t // 3 + 1, x - t % 3 + 1
    inside = (yo >= 0) & (yo < h) & (xo >= 0) & (xo < w)
    offset = ((yo * w + xo) * c + ch) * 9 + t
    return numpy.where(inside, offset, 0).ravel(), inside.reshape(h, w, c, 9)


def _col2im(xp, dz, w, shape, ws):
    """dz: (N*H*W, O) -> the input gradient (N, H, W, C): the columns' gradient dz @ W
    (O, 9*C), gathered so each input pixel's 9 taps sit together, summed where inside."""
    n, h, wd, c = shape
    o = w.shape[0]
    dcol = ws.get(xp, "dev.dcol", (n, h * wd * c * 9), dz.dtype)
    xp.matmul(dz, w.reshape(o, 9 * c), out=dcol.reshape(n * h * wd, 9 * c))
    index = ws.constant(xp, f"dev.col2im.{h}.{wd}.{c}", numpy.int64, lambda: _col2im_index(h, wd, c)[0])
    mask = ws.constant(xp, f"dev.col2im_mask.{h}.{wd}.{c}", dz.dtype, lambda: _col2im_index(h, wd, c)[1])
    return backend.fuse(_masked_tap_sum)(xp.take(dcol, index, axis=1).reshape(n, h, wd, c, 9), mask)


def _windows(a):
    """a: (n, H, W, C) -> its four (n, H//2, W//2, C) strided views, one per 2x2 window position."""
    ho, wo = a.shape[1] // 2, a.shape[2] // 2
    return [a[:, i : 2 * ho : 2, k : 2 * wo : 2] for i in (0, 1) for k in (0, 1)]


# -- the block ------------------------------------------------------------------------------


def train_forward(x, w, gamma, beta, eps, pool, ws, reduce_sums=None, running=None):
    """Training-mode forward on the device; the arguments as ``fused.conv_bn_relu_train_forward``.

    ``running``: None, or (running_mean, running_var, bias or None, momentum, count) to fold the
    batch into (in place, in the finishing kernel). Returns (out, cache, mean, var), var None
    when ``running`` is given (it is folded already).
    """
    xp = get_array_module(x, w, gamma, beta)
    xh = nhwc(x)
    n, h, wd, c = xh.shape
    o = w.shape[0]
    dt = w.dtype
    s = dt.type
    m = n * h * wd
    z = _cols(xp, xh, ws) @ w.reshape(o, 9 * c).T
    a = z[0]
    sums = backend.fuse(_shifted_sums)(z, a, _complex(dt))
    sd, sdd = sums.real, sums.imag
    if reduce_sums is not None:
        # Every rank's shift differs, so the ranks add plain sums (in float64, as the CPU does).
        from xpnet.functional.normalization import sums_over_ranks

        sd64, sdd64, a64 = (v.astype(numpy.float64) for v in (sd, sdd, a))
        s1 = m * a64 + sd64
        (s1, s2), m = sums_over_ranks(reduce_sums, (s1, sdd64 + a64 * (sd64 + sd64 + m * a64)), m)
        zero = xp.zeros(o, dtype=numpy.float64)
        a, sd, sdd = zero.astype(dt), s1.astype(dt), s2.astype(dt)
    if running is None:
        mean, var, inv_std, scale, shift = backend.fuse(_bn_finish)(sd, sdd, a, gamma, beta, s(m), s(eps))
    else:
        running_mean, running_var, bias, momentum, count = running
        mean, inv_std, scale, shift = backend.fuse(_bn_finish_running)(
            sd, sdd, a, gamma, beta, s(m), s(eps), running_mean, running_var, s(0) if bias is None else bias,
            s(1.0 - momentum), s(momentum), s(momentum * count / max(count - 1, 1)),
        )
        var = None
    zh = z.reshape(n, h, wd, o)
    if pool:
        out = backend.fuse(_affine_relu_pool)(*_windows(zh), scale, shift)
    else:
        out = backend.fuse(_affine_relu)(zh, scale, shift)
    cache = (x, w, gamma, zh, None if pool else out, pool, mean, inv_std, scale, shift)
    return nchw(out), cache, mean, var


def eval_forward(x, w, b, gamma, beta, running_mean, running_var, eps, pool, ws):
    """Eval-mode forward on the device: the convolution, then one kernel that folds BatchNorm's
    running statistics and the bias in per channel, rectifies [and pools]."""
    xp = get_array_module(x, w, gamma, beta)
    xh = nhwc(x)
    n, h, wd, c = xh.shape
    o = w.shape[0]
    s = w.dtype.type
    zh = (_cols(xp, xh, ws) @ w.reshape(o, 9 * c).T).reshape(n, h, wd, o)
    bias = s(0) if b is None else b
    if pool:
        out = backend.fuse(_eval_affine_relu_pool)(*_windows(zh), gamma, beta, running_mean, running_var, bias, s(eps))
    else:
        out = backend.fuse(_eval_affine_relu)(zh, gamma, beta, running_mean, running_var, bias, s(eps))
    return nchw(out)


def backward(dout, cache, grads, write_dw=False, need_dx=True, ws=None, reduce_sums=None):
    """dout: gradient of the training-mode forward's output.

    ``grads``: (dw (O, C, 3, 3), dgamma (O,), dbeta (O,)) arrays that the gradients are added
    into (the conv bias's is zero); with ``write_dw`` the weight's gradient is written into ``dw``
    instead (it is known to be zero). Returns dx (N, C, H, W) or None.
    """
    x, w, gamma, zh, y, pool, mean, inv_std, scale, shift = cache
    gw, ggamma, gbeta = grads
    xp = get_array_module(dout, zh)
    xh = nhwc(x)
    douth = nhwc(dout)
    n, h, wd, o = zh.shape
    c = xh.shape[3]
    dt = zh.dtype
    s = dt.type
    m = n * h * wd
    j = _complex(dt)

    if pool:
        zw = _windows(zh)
        sums = backend.fuse(_pool_grad_sums)(douth, *zw, scale, shift, mean, j)
    else:
        sums = backend.fuse(_grad_sums)(douth.reshape(m, o), y.reshape(m, o), zh.reshape(m, o), mean, j)
    sg, sgz = sums.real, sums.imag
    sg_all, sgz_all, m_all = sg, sgz, m
    if reduce_sums is not None:
        from xpnet.functional.normalization import sums_over_ranks

        (sg_all, sgz_all), m_all = sums_over_ranks(reduce_sums, (sg, sgz), m)

    dz = xp.empty((n, h, wd, o), dtype=dt)
    coefs = (sg_all, sgz_all, mean, inv_std, gamma, s(m_all))
    if pool:
        backend.fuse(_pool_bn_dz_into)(douth, *zw, scale, shift, *coefs, *_windows(dz))
        ho, wo = h // 2, wd // 2
        if 2 * ho != h:
            backend.fuse(_edge_dz_into)(zh[:, 2 * ho :], *coefs, dz[:, 2 * ho :])
        if 2 * wo != wd:
            backend.fuse(_edge_dz_into)(zh[:, : 2 * ho, 2 * wo :], *coefs, dz[:, : 2 * ho, 2 * wo :])
    else:
        backend.fuse(_bn_dz_into)(douth, y, zh, *coefs, dz)
    # The conv bias's gradient, sum(dz), is zero: BatchNorm cancels any shift of z.
    backend.fuse(_param_grads)(sg, sgz, inv_std, ggamma, gbeta)

    dzr = dz.reshape(m, o)
    cols = _cols(xp, xh, ws)
    gw2 = gw.reshape(o, 9 * c)
    if write_dw:
        xp.matmul(dzr.T, cols, out=gw2)
    else:
        gw2 += dzr.T @ cols
    if not need_dx:
        return None
    return nchw(_col2im(xp, dzr, w, (n, h, wd, c), ws))
