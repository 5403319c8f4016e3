"""Max, average and global average pooling over NCHW-shaped, channels-last arrays.

Windows are visited tap by tap, like the convolution's im2col: each tap is one strided slice of
the (padded) input, so any kernel, stride and padding works with kh*kw vectorised passes.
"""

from __future__ import annotations

from xpnet.backend import get_array_module
from xpnet.functional.conv import _pair, _tap, output_size, pad_nhwc
from xpnet.functional.layout import nchw, nhwc


def _geometry(x_shape, kernel_size, stride, padding):
    kh, kw = _pair(kernel_size)
    stride = (kh, kw) if stride is None else _pair(stride)
    padding = _pair(padding)
    _, _, h, w = x_shape
    ho = output_size(h, kh, stride[0], padding[0], 1)
    wo = output_size(w, kw, stride[1], padding[1], 1)
    return (kh, kw), stride, padding, (ho, wo)


def maxpool2d_forward(x, kernel_size, stride=None, padding=0):
    """x: (N, C, H, W) -> (y: (N, C, Ho, Wo), cache); stride defaults to the kernel size.

    The cache records which tap won each window; on ties the first tap in row-major order wins,
    as in PyTorch, so the gradient goes to exactly one input per window.
    """
    xp = get_array_module(x)
    (kh, kw), stride, padding, (ho, wo) = _geometry(x.shape, kernel_size, stride, padding)
    xpad = pad_nhwc(x, padding, value=-xp.inf) if any(padding) else nhwc(x)
    y = None
    arg = xp.zeros((x.shape[0], ho, wo, x.shape[1]), dtype=xp.uint8)
    for t in range(kh * kw):
        rows, cols = _tap(t // kw, t % kw, ho, wo, stride, (1, 1))
        tap = xpad[:, rows, cols, :]
        if y is None:
            y = tap.copy()
            continue
        better = tap > y
        xp.copyto(y, tap, where=better)
        # copyto, not arg[better] = t: a boolean-mask assignment makes CuPy count the mask on the
        # host, a synchronisation per tap.
        xp.copyto(arg, t, where=better)
    return nchw(y), (arg, x.shape, (kh, kw), stride, padding)


def maxpool2d_backward(dy, cache):
    """dy: (N, C, Ho, Wo) -> dx: (N, C, H, W), each window's gradient sent to its maximum."""
    arg, x_shape, (kh, kw), stride, padding = cache
    xp = get_array_module(dy)
    n, c, h, w = x_shape
    ph, pw = padding
    ho, wo = arg.shape[1:3]
    dyh = nhwc(dy)
    dxpad = xp.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=dy.dtype)
    for t in range(kh * kw):
        rows, cols = _tap(t // kw, t % kw, ho, wo, stride, (1, 1))
        dxpad[:, rows, cols, :] += xp.where(arg == t, dyh, 0)
    return nchw(dxpad[:, ph : ph + h, pw : pw + w, :])


def avgpool2d_forward(x, kernel_size, stride=None):
    """x: (N, C, H, W) -> (y: (N, C, Ho, Wo), cache): the mean of each window (no padding)."""
    xp = get_array_module(x)
    (kh, kw), stride, padding, (ho, wo) = _geometry(x.shape, kernel_size, stride, 0)
    xh = nhwc(x)
    y = xp.zeros((x.shape[0], ho, wo, x.shape[1]), dtype=x.dtype)
    for t in range(kh * kw):
        rows, cols = _tap(t // kw, t % kw, ho, wo, stride, (1, 1))
        y += xh[:, rows, cols, :]
    y *= x.dtype.type(1.0 / (kh * kw))
    return nchw(y), (x.shape, (kh, kw), stride)


def avgpool2d_backward(dy, cache):
    """dy: (N, C, Ho, Wo) -> dx: (N, C, H, W), each window's gradient shared equally."""
    x_shape, (kh, kw), stride = cache
    xp = get_array_module(dy)
    n, c, h, w = x_shape
    ho, wo = dy.shape[2:]
    g = nhwc(dy) * dy.dtype.type(1.0 / (kh * kw))
    dx = xp.zeros((n, h, w, c), dtype=dy.dtype)
    for t in range(kh * kw):
        rows, cols = _tap(t // kw, t % kw, ho, wo, stride, (1, 1))
        dx[:, rows, cols, :] += g
    return nchw(dx)


def global_avgpool_forward(x):
    """x: (N, C, H, W) -> (y: (N, C, 1, 1), x's shape): the mean over all pixels."""
    return x.mean(axis=(2, 3), keepdims=True), x.shape


def global_avgpool_backward(dy, x_shape):
    """dy: (N, C, 1, 1) -> dx: (N, C, H, W) with dy / (H*W) at every pixel."""
    xp = get_array_module(dy)
    n, c, h, w = x_shape
    dx = xp.empty((n, h, w, c), dtype=dy.dtype)
    dx[...] = nhwc(dy) * dy.dtype.type(1.0 / (h * w))
    return nchw(dx)
