"""2-D convolution (cross-correlation, as in PyTorch) by im2col and one GEMM.

The columns are built channels-last: for each of the kh*kw kernel taps one strided slice of the
padded (N, Hp, Wp, C) input is copied into place, so a row of the column matrix is one output
pixel's receptive field ordered (tap_i, tap_j, channel). The weight is reshaped to match, and the
output comes straight out of the GEMM as channels-last rows.
"""

from __future__ import annotations

import numpy

from xpnet.backend import get_array_module
from xpnet.functional.layout import from_rows, nchw, nhwc, to_rows


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def output_size(size, k, stride, padding, dilation):
    """Output length of a convolution or pooling window along one axis."""
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _tap(i, j, ho, wo, stride, dilation):
    """The (rows, cols) slices of the padded input that tap (i, j) reads for every output pixel."""
    (sh, sw), (dh, dw) = stride, dilation
    return (
        slice(i * dh, i * dh + sh * (ho - 1) + 1, sh),
        slice(j * dw, j * dw + sw * (wo - 1) + 1, sw),
    )


def pad_nhwc(x, padding, value=0.0):
    """x: (N, C, H, W) -> (N, H + 2ph, W + 2pw, C) contiguous copy with a constant border."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    ph, pw = padding
    out = xp.empty((n, h + 2 * ph, w + 2 * pw, c), dtype=x.dtype)
    if ph or pw:
        out.fill(value)
    out[:, ph : ph + h, pw : pw + w, :] = nhwc(x)
    return out


def im2col(x, kernel_size, stride=1, padding=0, dilation=1):
    """x: (N, C, H, W) -> (cols: (N*Ho*Wo, kh*kw*C), (Ho, Wo)).

    Row ``(n, y, x)`` holds the receptive field of output pixel (y, x) of image n, ordered
    (tap_i, tap_j, channel).
    """
    xp = get_array_module(x)
    kh, kw = _pair(kernel_size)
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, w = x.shape
    ho = output_size(h, kh, stride[0], padding[0], dilation[0])
    wo = output_size(w, kw, stride[1], padding[1], dilation[1])
    xpad = pad_nhwc(x, padding)
    cols = xp.empty((n, ho, wo, kh, kw, c), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, colsl = _tap(i, j, ho, wo, stride, dilation)
            cols[:, :, :, i, j, :] = xpad[:, rows, colsl, :]
    return cols.reshape(n * ho * wo, kh * kw * c), (ho, wo)


def col2im(cols, x_shape, kernel_size, stride=1, padding=0, dilation=1):
    """The adjoint of ``im2col``: cols (N*Ho*Wo, kh*kw*C) -> dx (N, C, H, W), summing overlaps."""
    xp = get_array_module(cols)
    kh, kw = _pair(kernel_size)
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, w = x_shape
    ho = output_size(h, kh, stride[0], padding[0], dilation[0])
    wo = output_size(w, kw, stride[1], padding[1], dilation[1])
    ph, pw = padding
    cols = cols.reshape(n, ho, wo, kh, kw, c)
    dxpad = xp.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, colsl = _tap(i, j, ho, wo, stride, dilation)
            dxpad[:, rows, colsl, :] += cols[:, :, :, i, j, :]
    return nchw(dxpad[:, ph : ph + h, pw : pw + w, :])


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1):
    """x: (N, C, H, W); w: (O, C, kh, kw); b: (O,) or None -> (y: (N, O, Ho, Wo), cache).

    y is channels-last in memory. The cache holds the columns for the weight gradient.
    """
    get_array_module(x, w, b)
    o, c, kh, kw = w.shape
    if x.shape[1] != c:
        raise ValueError(f"conv2d: input has {x.shape[1]} channels, weight expects {c}")
    cols, (ho, wo) = im2col(x, (kh, kw), stride, padding, dilation)
    wmat = w.transpose(2, 3, 1, 0).reshape(kh * kw * c, o)
    y = cols @ wmat
    if b is not None:
        y += b
    cache = (cols, wmat, x.shape, w.shape, b is not None, (stride, padding, dilation))
    return from_rows(y, (x.shape[0], o, ho, wo)), cache


def conv2d_backward(dy, cache):
    """dy: (N, O, Ho, Wo) -> (dx: (N, C, H, W), dw: (O, C, kh, kw), db: (O,) or None)."""
    cols, wmat, x_shape, w_shape, has_bias, (stride, padding, dilation) = cache
    o, c, kh, kw = w_shape
    dy_rows = to_rows(dy)
    dw = (cols.T @ dy_rows).reshape(kh, kw, c, o).transpose(3, 2, 0, 1)
    db = dy_rows.sum(axis=0) if has_bias else None
    dcols = dy_rows @ wmat.T
    dx = col2im(dcols, x_shape, (kh, kw), stride, padding, dilation)
    return dx, dw, db


# -- 3x3, stride 1, padding 1: cache-blocked kernels on channels-last memory ------------------
#
# The general path above builds the whole column matrix (9x the input) and pads a copy of the
# input. The kernels below build the columns a few images at a time into a workspace buffer that
# stays in cache while its GEMM reads it, and the buffer's padding border is zeroed once when the
# workspace makes it and never written again, so no padded copy is needed either.
#
# A pixel's column holds its 9 taps of C channels in one of two orders:
# * tap-major, (tap_i, tap_j, channel): each tap's copy moves runs of C contiguous values; the
#   weights (O, C, 3, 3) and their gradient need a transposed copy per call;
# * channel-major, (channel, tap_i, tap_j), the order of a PyTorch-layout weight seen as
#   (O, 9C): the weight matrix and its gradient are views, but each tap's copy moves single
#   values 9 apart, the slowest copy NumPy makes.
# The copies scale with the activations and the transposes with the weights, so ``Im2col3x3``
# takes tap-major where a batch has more pixels than the layer has output channels (narrow and
# large-image layers), and channel-major for small images with many channels.


def _tap_view(a, t, tap_major):
    """The tap-t view of an array whose last two axes are a column's (9, C) or (C, 9)."""
    return a[..., t, :] if tap_major else a[..., :, t]


def _col_shape(c, tap_major):
    return (9, c) if tap_major else (c, 9)


def col3x3_buffer(ws, xp, nb, h, w, c, dtype, name="col3x3", tap_major=True):
    """A (nb, H, W, 9, C) (or (nb, H, W, C, 9)) column buffer from workspace ``ws`` whose
    padding border is zero."""
    return ws.get(xp, name, (nb, h, w, *_col_shape(c, tap_major)), dtype, zero=True)


def _taps3x3(h, w):
    """(t, output slices, input slices) of the 9 taps of a 3x3, padding-1 window; only the
    in-bounds part of each tap is listed."""
    for t in range(9):
        i, j = divmod(t, 3)
        h0, h1 = max(0, 1 - i), min(h, h + 1 - i)
        w0, w1 = max(0, 1 - j), min(w, w + 1 - j)
        yield t, (slice(h0, h1), slice(w0, w1)), (slice(h0 + i - 1, h1 + i - 1), slice(w0 + j - 1, w1 + j - 1))


def im2col3x3_into(x, n0, n1, col, tap_major=True):
    """x: (N, H, W, C) channels-last view; col: (nb, H, W, 9, C), or (nb, H, W, C, 9) when not
    ``tap_major``, with a zero border.

    Fills ``col[:n1 - n0]`` with the 3x3, padding-1 receptive fields of images ``n0:n1``. Only
    in-bounds entries are written.
    """
    n = n1 - n0
    for t, (ro, co), (ri, ci) in _taps3x3(x.shape[1], x.shape[2]):
        _tap_view(col[:n, ro, co], t, tap_major)[...] = x[n0:n1, ri, ci]


def col2im3x3_add(dcols, dx, tap_major=True):
    """The adjoint of ``im2col3x3_into`` for one chunk: dcols (n, H, W, 9, C) (or
    (n, H, W, C, 9)) summed into dx (n, H, W, C), which the caller has zeroed."""
    for t, (ro, co), (ri, ci) in _taps3x3(dx.shape[1], dx.shape[2]):
        dx[:, ri, ci] += _tap_view(dcols[:, ro, co], t, tap_major)


def _im2col3x3_index(h, w, c, tap_major):
    """(H*W*9*C,) host offsets: column entry (y, x, tap (i, j), channel) (in the column order)
    of a 3x3, padding-1 window reads the zero-padded (H+2, W+2, C) image at (y+i, x+j, channel)."""
    if tap_major:
        y, x, t, ch = numpy.meshgrid(*(numpy.arange(k) for k in (h, w, 9, c)), indexing="ij")
    else:
        y, x, ch, t = numpy.meshgrid(*(numpy.arange(k) for k in (h, w, c, 9)), indexing="ij")
    return (((y + t // 3) * (w + 2) + x + t % 3) * c + ch).ravel()


def _col2im3x3_index(h, w, c, tap_major):
    """(H*W*C*9,) host offsets: input pixel (y, x, channel) gets, for tap (i, j), the column
    gradient of output pixel (y-i+1, x-j+1) at that tap, found in the column gradient zero-padded
    to (H+2, W+2) pixels at (y-i+2, x-j+2, tap, channel); the 9 taps of a pixel's channel are
    adjacent in the result."""
    y, x, ch, t = numpy.meshgrid(*(numpy.arange(k) for k in (h, w, c, 9)), indexing="ij")
    pixel = (y - t // 3 + 2) * (w + 2) + x - t % 3 + 2
    return (pixel * 9 * c + (t * c + ch if tap_major else ch * 9 + t)).ravel()


class Im2col3x3:
    """The convolution steps of a fused 3x3 block by im2col + GEMM, on chunks of images.

    The same interface as ``xpnet.functional.winograd.Winograd3x3``: one plan per call of a fused
    kernel on (N, H, W, C) -> (N, H, W, O), scratch from workspace ``ws`` per thread index ``t``.
    The input gradient is ``dz @ W`` (the columns' gradient) folded back by ``col2im3x3_add``.
    """

    def __init__(self, h, w, c, o, nb, ws, dtype, n=None, tap_major=None):
        """The column order is ``tap_major`` if given, else chosen from the batch's image count
        ``n`` (tap-major where the batch has at least as many pixels as there are output
        channels, or when ``n`` is not given either)."""
        self.h, self.w, self.c, self.o, self.nb, self.ws, self.dtype = h, w, c, o, nb, ws, dtype
        self.dw_shape = (o, 9 * c)
        self.tap_major = tap_major if tap_major is not None else n is None or n * h * w >= o

    @staticmethod
    def image_bytes(h, w, c, o, itemsize):
        """Column-buffer bytes per image of a chunk."""
        return h * w * 9 * c * itemsize

    def weights(self, w):
        """w: (O, C, 3, 3) -> (9*C, O), rows in the columns' order (a view if channel-major)."""
        if not self.tap_major:
            return w.reshape(self.o, 9 * self.c).T
        xp = get_array_module(w)
        return xp.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(9 * self.c, self.o)

    def _cols(self, xp, x, n0, n1, t):
        """Columns of images n0:n1 of x (N, H, W, C) as (k*H*W, 9*C)."""
        k = n1 - n0
        h, w, c = self.h, self.w, self.c
        if xp is not numpy:
            # A GPU gathers all 9 taps in one kernel from a zero-bordered copy of the input,
            # where the nine strided copies below would be nine launches.
            xpad = self.ws.get(xp, f"pad3x3.{t}", (self.nb, h + 2, w + 2, c), self.dtype, zero=True)
            xpad[:k, 1 : h + 1, 1 : w + 1] = x[n0:n1]
            tm = self.tap_major
            index = self.ws.constant(
                xp, f"im2col3x3.{h}.{w}.{c}.{tm}", numpy.int64, lambda: _im2col3x3_index(h, w, c, tm)
            )
            return xp.take(xpad[:k].reshape(k, -1), index, axis=1).reshape(k * h * w, 9 * c)
        col = col3x3_buffer(self.ws, xp, self.nb, h, w, c, self.dtype, f"col3x3.{t}", self.tap_major)
        im2col3x3_into(x, n0, n1, col, self.tap_major)
        return col[:k].reshape(k * self.h * self.w, 9 * self.c)

    def forward_into(self, x, n0, n1, wmat, out, t):
        """out (k, H, W, O), contiguous <- conv of images n0:n1 of x (N, H, W, C)."""
        xp = get_array_module(x)
        cols = self._cols(xp, x, n0, n1, t)
        xp.matmul(cols, wmat, out=out.reshape(cols.shape[0], self.o))

    def backward_into(self, x, dz, n0, n1, wmat, dw_out, dx_out, t):
        """Gradients of images n0:n1 from dz (k, H, W, O), contiguous, with the forward's ``wmat``:
        dw_out (O, 9*C) <- their weight gradient; dx_out (k, H, W, C) <- their input gradient
        (skipped when None)."""
        xp = get_array_module(x)
        k = n1 - n0
        cols = self._cols(xp, x, n0, n1, t)
        dz = dz.reshape(cols.shape[0], self.o)
        xp.matmul(dz.T, cols, out=dw_out)
        if dx_out is None:
            return
        h, w, c = self.h, self.w, self.c
        if xp is not numpy:
            # The adjoint as a gather too: each input pixel sums its 9 taps' column gradients,
            # read from a zero-bordered copy (one copy, one gather, one sum).
            tm, pixel = self.tap_major, _col_shape(c, self.tap_major)
            dpad = self.ws.get(xp, f"dcolpad.{t}", (self.nb, h + 2, w + 2, *pixel), self.dtype, zero=True)
            dpad[:k, 1 : h + 1, 1 : w + 1] = (dz @ wmat.T).reshape(k, h, w, *pixel)
            index = self.ws.constant(
                xp, f"col2im3x3.{h}.{w}.{c}.{tm}", numpy.int64, lambda: _col2im3x3_index(h, w, c, tm)
            )
            xp.sum(xp.take(dpad[:k].reshape(k, -1), index, axis=1).reshape(k, h, w, c, 9), axis=-1, out=dx_out)
            return
        dcol = self.ws.get(xp, f"dcol.{t}", (self.nb, h, w, *_col_shape(c, self.tap_major)), self.dtype)
        xp.matmul(dz, wmat.T, out=dcol[:k].reshape(cols.shape))
        dx_out.fill(0.0)
        col2im3x3_add(dcol[:k], dx_out, self.tap_major)

    def dw_finish(self, dwmat):
        """(O, 9*C) summed over chunks -> (O, C, 3, 3) (a view if channel-major)."""
        if not self.tap_major:
            return dwmat.reshape(self.o, self.c, 3, 3)
        xp = get_array_module(dwmat)
        return xp.ascontiguousarray(dwmat.reshape(self.o, 3, 3, self.c).transpose(0, 3, 1, 2))
