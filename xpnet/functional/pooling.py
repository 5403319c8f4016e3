"""Max, average and global average pooling over NCHW-shaped, channels-last arrays.

Windows are visited tap by tap, like the convolution's im2col: each tap is one strided slice of
the (padded) input, so any kernel, stride and padding works with kh*kw vectorised passes.

Max-pool has two backward rules for a window whose maximum occurs more than once:

* ``ties="first"`` (the default, as PyTorch): the first maximal tap in row-major order takes the
  whole gradient, so the input gradient of every window sums to its ``dy``;
* ``ties="share"``: every tap equal to the maximum takes the whole gradient (the rule of the second
  report, which masks all of them), so a window with k tied maxima passes on k times its ``dy``.

Without ties the two agree and both are the derivative; with ties neither is (max is not
differentiable there), and "share" is the one that is not a subgradient.
"""

from __future__ import annotations

import numpy

from xpnet import backend
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


TIES = ("first", "share")


def maxpool2d_forward(x, kernel_size, stride=None, padding=0, ties="first"):
    """x: (N, C, H, W) -> (y: (N, C, Ho, Wo), cache); stride defaults to the kernel size.

    ``ties="first"``: the cache records which tap won each window, the first in row-major order
    on ties, as in PyTorch, so the gradient goes to exactly one input per window.
    ``ties="share"``: the cache keeps the (padded) input and y, and the backward sends each
    window's gradient to every input equal to its maximum.
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    xp = get_array_module(x)
    (kh, kw), stride, padding, (ho, wo) = _geometry(x.shape, kernel_size, stride, padding)
    if xp is not numpy and ties == "first" and (kh, kw) == stride == (2, 2) and not any(padding):
        # On a GPU the common 2x2 pool is one kernel each way, over the four window positions.
        return nchw(backend.fuse(_max4)(*_windows2(nhwc(x)))), ("device2x2", x)
    xpad = pad_nhwc(x, padding, value=-xp.inf) if any(padding) else nhwc(x)
    if ties == "share":
        y = _window_max(xp, xpad, (kh, kw), stride, (ho, wo))
        return nchw(y), ("share", xpad, y, x.shape, (kh, kw), stride, padding)
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
    return nchw(y), ("first", arg, x.shape, (kh, kw), stride, padding)


def _window_max(xp, xpad, k, stride, out_hw):
    """xpad: (N, Hp, Wp, C) -> (N, Ho, Wo, C), the maximum of each window."""
    kh, kw = k
    y = None
    for t in range(kh * kw):
        rows, cols = _tap(t // kw, t % kw, *out_hw, stride, (1, 1))
        tap = xpad[:, rows, cols, :]
        y = tap.copy() if y is None else xp.maximum(y, tap, out=y)
    return y


def maxpool2d_backward(dy, cache):
    """dy: (N, C, Ho, Wo) -> dx: (N, C, H, W), each window's gradient sent to its maximum (the
    first one, or every one with ``ties="share"``)."""
    if cache[0] == "device2x2":
        return _maxpool2x2_backward_device(dy, cache[1])
    if cache[0] == "share":
        _, xpad, y, x_shape, (kh, kw), stride, padding = cache
        ho, wo = y.shape[1:3]
    else:
        _, arg, x_shape, (kh, kw), stride, padding = cache
        ho, wo = arg.shape[1:3]
    xp = get_array_module(dy)
    n, c, h, w = x_shape
    ph, pw = padding
    dyh = nhwc(dy)
    if tuple(stride) == (kh, kw) and not (ph or pw):
        return _disjoint_windows_backward(xp, dyh, cache, x_shape, (kh, kw))
    dxpad = xp.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=dy.dtype)
    for t in range(kh * kw):
        rows, cols = _tap(t // kw, t % kw, ho, wo, stride, (1, 1))
        won = (xpad[:, rows, cols, :] == y) if cache[0] == "share" else (arg == t)
        dxpad[:, rows, cols, :] += xp.where(won, dyh, 0)
    return nchw(dxpad[:, ph : ph + h, pw : pw + w, :])


def _disjoint_windows_backward(xp, dyh, cache, x_shape, k):
    """maxpool2d_backward where the windows tile the input without overlap (stride = kernel, no
    padding): each tap's gradient is written straight into its strided view of dx, one pass per
    tap and no accumulation; only the edge rows and columns that no window covers are zeroed."""
    kh, kw = k
    n, c, h, w = x_shape
    ho, wo = dyh.shape[1:3]
    dx = (xp.zeros if h != kh * ho or w != kw * wo else xp.empty)((n, h, w, c), dtype=dyh.dtype)
    won = xp.empty(dyh.shape, dtype=bool)
    for t in range(kh * kw):
        rows, cols = _tap(t // kw, t % kw, ho, wo, (kh, kw), (1, 1))
        if cache[0] == "share":
            xp.equal(cache[1][:, rows, cols, :], cache[2], out=won)
        else:
            xp.equal(cache[1], t, out=won)
        xp.multiply(dyh, won, out=dx[:, rows, cols, :])
    return nchw(dx)


def _windows2(a):
    """a: (N, H, W, C) -> its four (N, H//2, W//2, C) strided views, one per 2x2 window position."""
    ho, wo = a.shape[1] // 2, a.shape[2] // 2
    return [a[:, i : 2 * ho : 2, k : 2 * wo : 2] for i in (0, 1) for k in (0, 1)]


def _max4(a, b, c, d):
    xp = backend.xp()
    return xp.maximum(xp.maximum(a, b), xp.maximum(c, d))


def _first_max_grad(dy, x00, x01, x10, x11, g00, g01, g10, g11):
    """Each 2x2 window's gradient to its first position (row-major) equal to its maximum, written
    into the four positions' views of the input gradient."""
    xp = backend.xp()
    top = xp.maximum(xp.maximum(x00, x01), xp.maximum(x10, x11))
    h00 = x00 == top
    free = ~h00
    h01 = (x01 == top) & free
    free = free & ~h01
    h10 = (x10 == top) & free
    xp.multiply(dy, h00, g00)
    xp.multiply(dy, h01, g01)
    xp.multiply(dy, h10, g10)
    xp.multiply(dy, (x11 == top) & free & ~h10, g11)


def _maxpool2x2_backward_device(dy, x):
    xp = get_array_module(dy)
    n, c, h, w = x.shape
    # Odd edges belong to no window: zeroed (a memset), else every entry is written.
    dx = (xp.zeros if h % 2 or w % 2 else xp.empty)((n, h, w, c), dtype=dy.dtype)
    backend.fuse(_first_max_grad)(nhwc(dy), *_windows2(nhwc(x)), *_windows2(dx))
    return nchw(dx)


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
