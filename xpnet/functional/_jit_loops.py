"""The compiled loops behind ``xpnet.functional.jit`` (imported only when Numba is there).

Every loop is ``njit(nogil=True, cache=True)``, runs over one chunk of channels-last arrays with
the channel loop innermost, and takes its arrays C-contiguous (the callers pass workspace views
sized to the chunk). Multiplying constants come in ``coef``, an array of the data's dtype, so a
float32 loop never widens to float64 through a Python literal.

Winograd F(4x4, 3x3) (``winograd4``): every transform is separable, ``M d M^T`` over a tile, and
runs as two stages per tile through a small scratch that stays in L1: first along each of the
tile's rows, then along its columns. ``coef`` = (2, 4, 5, 8).
"""

from __future__ import annotations

import numpy
from numba import njit

_JIT = dict(nogil=True, cache=True, error_model="numpy", boundscheck=False)


# -- the one-dimensional transforms, inlined into the loops below ------------------------------
# BT (6x6), its transpose B, AT (4x6) and its transpose A: winograd4.BT4 and winograd4.AT4.


@njit(inline="always", **_JIT)
def _bt6(d0, d1, d2, d3, d4, d5, c2, c4, c5):
    """BT @ d: a 6-value window -> its 6 taps."""
    return (
        c4 * d0 - c5 * d2 + d4,
        (d3 + d4) - c4 * (d1 + d2),
        (d4 - d3) + c4 * (d1 - d2),
        (d4 - d2) + c2 * (d3 - d1),
        (d4 - d2) - c2 * (d3 - d1),
        c4 * d1 - c5 * d3 + d5,
    )


@njit(inline="always", **_JIT)
def _b6(e0, e1, e2, e3, e4, e5, c2, c4, c5):
    """B @ e = BT^T @ e: 6 taps' gradients -> the window's 6 values (the adjoint of ``_bt6``)."""
    return (
        c4 * e0,
        c4 * (e2 - e1 + e5) + c2 * (e4 - e3),
        -(c5 * e0 + c4 * (e1 + e2) + (e3 + e4)),
        (e1 - e2) + c2 * (e3 - e4) - c5 * e5,
        e0 + e1 + e2 + e3 + e4,
        e5,
    )


@njit(inline="always", **_JIT)
def _at4(m0, m1, m2, m3, m4, m5, c2, c4, c8):
    """AT @ m: 6 tap products -> 4 outputs."""
    p, q = m1 + m2, m1 - m2
    r, s = m3 + m4, m3 - m4
    return m0 + p + r, q + c2 * s, p + c4 * r, q + c8 * s + m5


@njit(inline="always", **_JIT)
def _a6(d0, d1, d2, d3, c2, c4, c8):
    """A @ d = AT^T @ d: 4 outputs' gradients -> 6 taps (the adjoint of ``_at4``)."""
    p, q = d0 + d2, d1 + d3
    r, s = c4 * d2 + d0, c2 * d1 + c8 * d3
    return d0, p + q, p - q, r + s, r - s, d3


# -- Winograd F(4x4, 3x3) transforms over a chunk --------------------------------------------


@njit(**_JIT)
def wino4_input(xpad, u, coef):
    """xpad (k, 4th+2, 4tw+2, C), zero-bordered -> u (36, k, th, tw, C): ``BT d BT^T`` of every
    6x6 tile d (tile (i, j) starts at padded row 4i, column 4j)."""
    k, th, tw, nc = u.shape[1], u.shape[2], u.shape[3], u.shape[4]
    c2, c4, c5 = coef[0], coef[1], coef[2]
    tmp = numpy.empty((6, 6, nc), dtype=u.dtype)
    for n in range(k):
        for i in range(th):
            for j in range(tw):
                for a in range(6):
                    for c in range(nc):
                        y, x = 4 * i + a, 4 * j
                        t = _bt6(xpad[n, y, x, c], xpad[n, y, x + 1, c], xpad[n, y, x + 2, c],
                                 xpad[n, y, x + 3, c], xpad[n, y, x + 4, c], xpad[n, y, x + 5, c], c2, c4, c5)
                        tmp[a, 0, c], tmp[a, 1, c], tmp[a, 2, c] = t[0], t[1], t[2]
                        tmp[a, 3, c], tmp[a, 4, c], tmp[a, 5, c] = t[3], t[4], t[5]
                for s in range(6):
                    for c in range(nc):
                        t = _bt6(tmp[0, s, c], tmp[1, s, c], tmp[2, s, c], tmp[3, s, c], tmp[4, s, c],
                                 tmp[5, s, c], c2, c4, c5)
                        u[s, n, i, j, c] = t[0]
                        u[6 + s, n, i, j, c] = t[1]
                        u[12 + s, n, i, j, c] = t[2]
                        u[18 + s, n, i, j, c] = t[3]
                        u[24 + s, n, i, j, c] = t[4]
                        u[30 + s, n, i, j, c] = t[5]


@njit(**_JIT)
def wino4_input_adjoint(du, dxpad, coef):
    """The adjoint of ``wino4_input``: du (36, k, th, tw, C) -> dxpad (k, 4th+2, 4tw+2, C),
    overwritten (overlapping tiles add)."""
    k, th, tw, nc = du.shape[1], du.shape[2], du.shape[3], du.shape[4]
    c2, c4, c5 = coef[0], coef[1], coef[2]
    zero = coef[0] - coef[0]
    tmp = numpy.empty((6, 6, nc), dtype=du.dtype)
    for n in range(k):
        for y in range(dxpad.shape[1]):
            for x in range(dxpad.shape[2]):
                for c in range(nc):
                    dxpad[n, y, x, c] = zero
        for i in range(th):
            for j in range(tw):
                for r in range(6):
                    for c in range(nc):
                        e = _b6(du[6 * r, n, i, j, c], du[6 * r + 1, n, i, j, c], du[6 * r + 2, n, i, j, c],
                                du[6 * r + 3, n, i, j, c], du[6 * r + 4, n, i, j, c], du[6 * r + 5, n, i, j, c],
                                c2, c4, c5)
                        tmp[r, 0, c], tmp[r, 1, c], tmp[r, 2, c] = e[0], e[1], e[2]
                        tmp[r, 3, c], tmp[r, 4, c], tmp[r, 5, c] = e[3], e[4], e[5]
                for b in range(6):
                    x = 4 * j + b
                    for c in range(nc):
                        f = _b6(tmp[0, b, c], tmp[1, b, c], tmp[2, b, c], tmp[3, b, c], tmp[4, b, c],
                                tmp[5, b, c], c2, c4, c5)
                        y = 4 * i
                        dxpad[n, y, x, c] += f[0]
                        dxpad[n, y + 1, x, c] += f[1]
                        dxpad[n, y + 2, x, c] += f[2]
                        dxpad[n, y + 3, x, c] += f[3]
                        dxpad[n, y + 4, x, c] += f[4]
                        dxpad[n, y + 5, x, c] += f[5]


@njit(**_JIT)
def wino4_output(m, out, coef):
    """m (36, k, th, tw, O) -> out (k, H, W, O): ``AT m AT^T`` of every tile, cut at H, W."""
    k, th, tw, no = m.shape[1], m.shape[2], m.shape[3], m.shape[4]
    h, w = out.shape[1], out.shape[2]
    c2, c4, c8 = coef[0], coef[1], coef[3]
    tmp = numpy.empty((6, 4, no), dtype=m.dtype)
    for n in range(k):
        for i in range(th):
            for j in range(tw):
                for r in range(6):
                    for o in range(no):
                        t = _at4(m[6 * r, n, i, j, o], m[6 * r + 1, n, i, j, o], m[6 * r + 2, n, i, j, o],
                                 m[6 * r + 3, n, i, j, o], m[6 * r + 4, n, i, j, o], m[6 * r + 5, n, i, j, o],
                                 c2, c4, c8)
                        tmp[r, 0, o], tmp[r, 1, o], tmp[r, 2, o], tmp[r, 3, o] = t[0], t[1], t[2], t[3]
                ra, rb = min(4, h - 4 * i), min(4, w - 4 * j)
                y = 4 * i
                for b in range(rb):
                    x = 4 * j + b
                    if ra == 4:
                        for o in range(no):
                            t = _at4(tmp[0, b, o], tmp[1, b, o], tmp[2, b, o], tmp[3, b, o], tmp[4, b, o],
                                     tmp[5, b, o], c2, c4, c8)
                            out[n, y, x, o] = t[0]
                            out[n, y + 1, x, o] = t[1]
                            out[n, y + 2, x, o] = t[2]
                            out[n, y + 3, x, o] = t[3]
                    else:
                        for o in range(no):
                            t = _at4(tmp[0, b, o], tmp[1, b, o], tmp[2, b, o], tmp[3, b, o], tmp[4, b, o],
                                     tmp[5, b, o], c2, c4, c8)
                            for a in range(ra):
                                out[n, y + a, x, o] = t[a]


@njit(**_JIT)
def wino4_output_adjoint(dy, v, coef):
    """The adjoint of ``wino4_output``: dy (k, H, W, O) -> v (36, k, th, tw, O) (``A dy A^T`` of
    every tile, dy taken as zero past H, W)."""
    k, th, tw, no = v.shape[1], v.shape[2], v.shape[3], v.shape[4]
    h, w = dy.shape[1], dy.shape[2]
    c2, c4, c8 = coef[0], coef[1], coef[3]
    zero = coef[0] - coef[0]
    tmp = numpy.empty((4, 6, no), dtype=v.dtype)
    for n in range(k):
        for i in range(th):
            for j in range(tw):
                ra, rb = min(4, h - 4 * i), min(4, w - 4 * j)
                x = 4 * j
                for a in range(4):
                    y = 4 * i + a
                    if a >= ra:
                        for s in range(6):
                            for o in range(no):
                                tmp[a, s, o] = zero
                    elif rb == 4:
                        for o in range(no):
                            t = _a6(dy[n, y, x, o], dy[n, y, x + 1, o], dy[n, y, x + 2, o], dy[n, y, x + 3, o],
                                    c2, c4, c8)
                            tmp[a, 0, o], tmp[a, 1, o], tmp[a, 2, o] = t[0], t[1], t[2]
                            tmp[a, 3, o], tmp[a, 4, o], tmp[a, 5, o] = t[3], t[4], t[5]
                    else:
                        for o in range(no):
                            d0 = dy[n, y, x, o]
                            d1 = dy[n, y, x + 1, o] if rb > 1 else zero
                            d2 = dy[n, y, x + 2, o] if rb > 2 else zero
                            t = _a6(d0, d1, d2, zero, c2, c4, c8)
                            tmp[a, 0, o], tmp[a, 1, o], tmp[a, 2, o] = t[0], t[1], t[2]
                            tmp[a, 3, o], tmp[a, 4, o], tmp[a, 5, o] = t[3], t[4], t[5]
                for s in range(6):
                    for o in range(no):
                        t = _a6(tmp[0, s, o], tmp[1, s, o], tmp[2, s, o], tmp[3, s, o], c2, c4, c8)
                        v[s, n, i, j, o] = t[0]
                        v[6 + s, n, i, j, o] = t[1]
                        v[12 + s, n, i, j, o] = t[2]
                        v[18 + s, n, i, j, o] = t[3]
                        v[24 + s, n, i, j, o] = t[4]
                        v[30 + s, n, i, j, o] = t[5]




# -- Winograd F(2x2, 3x3) transforms over a chunk (``winograd``): coefficients 0 and +-1 only ----


@njit(inline="always", **_JIT)
def _bt4(d0, d1, d2, d3):
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


@njit(inline="always", **_JIT)
def _b4(e0, e1, e2, e3):
    return e0, (e1 - e2) + e3, (e1 + e2) - e0, -e3


@njit(inline="always", **_JIT)
def _at2(m0, m1, m2, m3):
    return m0 + m1 + m2, (m1 - m2) - m3


@njit(inline="always", **_JIT)
def _a4(d0, d1):
    return d0, d0 + d1, d0 - d1, -d1


@njit(**_JIT)
def wino2_input(xpad, u):
    """xpad (k, 2th+2, 2tw+2, C), zero-bordered -> u (16, k, th, tw, C): ``BT d BT^T`` of every
    4x4 tile d (tile (i, j) starts at padded row 2i, column 2j)."""
    k, th, tw, nc = u.shape[1], u.shape[2], u.shape[3], u.shape[4]
    tmp = numpy.empty((4, 4, nc), dtype=u.dtype)
    for n in range(k):
        for i in range(th):
            for j in range(tw):
                for a in range(4):
                    y, x = 2 * i + a, 2 * j
                    for c in range(nc):
                        t = _bt4(xpad[n, y, x, c], xpad[n, y, x + 1, c], xpad[n, y, x + 2, c], xpad[n, y, x + 3, c])
                        tmp[a, 0, c], tmp[a, 1, c], tmp[a, 2, c], tmp[a, 3, c] = t[0], t[1], t[2], t[3]
                for s in range(4):
                    for c in range(nc):
                        t = _bt4(tmp[0, s, c], tmp[1, s, c], tmp[2, s, c], tmp[3, s, c])
                        u[s, n, i, j, c] = t[0]
                        u[4 + s, n, i, j, c] = t[1]
                        u[8 + s, n, i, j, c] = t[2]
                        u[12 + s, n, i, j, c] = t[3]


@njit(**_JIT)
def wino2_input_adjoint(du, dxpad):
    """The adjoint of ``wino2_input``: du (16, k, th, tw, C) -> dxpad (k, 2th+2, 2tw+2, C),
    overwritten (overlapping tiles add)."""
    k, th, tw, nc = du.shape[1], du.shape[2], du.shape[3], du.shape[4]
    tmp = numpy.empty((4, 4, nc), dtype=du.dtype)
    dxpad[:k] = 0
    for n in range(k):
        for i in range(th):
            for j in range(tw):
                for r in range(4):
                    for c in range(nc):
                        e = _b4(du[4 * r, n, i, j, c], du[4 * r + 1, n, i, j, c], du[4 * r + 2, n, i, j, c],
                                du[4 * r + 3, n, i, j, c])
                        tmp[r, 0, c], tmp[r, 1, c], tmp[r, 2, c], tmp[r, 3, c] = e[0], e[1], e[2], e[3]
                for b in range(4):
                    x, y = 2 * j + b, 2 * i
                    for c in range(nc):
                        f = _b4(tmp[0, b, c], tmp[1, b, c], tmp[2, b, c], tmp[3, b, c])
                        dxpad[n, y, x, c] += f[0]
                        dxpad[n, y + 1, x, c] += f[1]
                        dxpad[n, y + 2, x, c] += f[2]
                        dxpad[n, y + 3, x, c] += f[3]


@njit(**_JIT)
def wino2_output(m, out):
    """m (16, k, th, tw, O) -> out (k, H, W, O): ``AT m AT^T`` of every tile, cut at H, W."""
    k, th, tw, no = m.shape[1], m.shape[2], m.shape[3], m.shape[4]
    h, w = out.shape[1], out.shape[2]
    tmp = numpy.empty((4, 2, no), dtype=m.dtype)
    for n in range(k):
        for i in range(th):
            for j in range(tw):
                for r in range(4):
                    for o in range(no):
                        t = _at2(m[4 * r, n, i, j, o], m[4 * r + 1, n, i, j, o], m[4 * r + 2, n, i, j, o],
                                 m[4 * r + 3, n, i, j, o])
                        tmp[r, 0, o], tmp[r, 1, o] = t[0], t[1]
                ra, rb = min(2, h - 2 * i), min(2, w - 2 * j)
                y = 2 * i
                for b in range(rb):
                    x = 2 * j + b
                    for o in range(no):
                        t = _at2(tmp[0, b, o], tmp[1, b, o], tmp[2, b, o], tmp[3, b, o])
                        out[n, y, x, o] = t[0]
                        if ra == 2:
                            out[n, y + 1, x, o] = t[1]


@njit(**_JIT)
def wino2_output_adjoint(dy, v):
    """The adjoint of ``wino2_output``: dy (k, H, W, O) -> v (16, k, th, tw, O) (dy taken as zero
    past H, W)."""
    k, th, tw, no = v.shape[1], v.shape[2], v.shape[3], v.shape[4]
    h, w = dy.shape[1], dy.shape[2]
    tmp = numpy.empty((2, 4, no), dtype=v.dtype)
    for n in range(k):
        for i in range(th):
            for j in range(tw):
                ra, rb = min(2, h - 2 * i), min(2, w - 2 * j)
                x = 2 * j
                for a in range(2):
                    y = 2 * i + a
                    if a >= ra:
                        tmp[a] = 0
                    elif rb == 2:
                        for o in range(no):
                            t = _a4(dy[n, y, x, o], dy[n, y, x + 1, o])
                            tmp[a, 0, o], tmp[a, 1, o], tmp[a, 2, o], tmp[a, 3, o] = t[0], t[1], t[2], t[3]
                    else:
                        for o in range(no):
                            d0 = dy[n, y, x, o]
                            tmp[a, 0, o], tmp[a, 1, o], tmp[a, 2, o], tmp[a, 3, o] = d0, d0, d0, d0 - d0
                for s in range(4):
                    for o in range(no):
                        t = _a4(tmp[0, s, o], tmp[1, s, o])
                        v[s, n, i, j, o] = t[0]
                        v[4 + s, n, i, j, o] = t[1]
                        v[8 + s, n, i, j, o] = t[2]
                        v[12 + s, n, i, j, o] = t[3]


# -- BatchNorm, ReLU and max-pool over a chunk (``fused``) ------------------------------------
# z*scale + shift is two roundings here as in NumPy (no fused multiply-add: fastmath is off), so
# a value remade in the backward pass equals the forward's bit for bit on either path.


# Rows of few channels are folded into wide rows: f consecutive rows of C channels are one row of
# f*C >= WIDE values (f divides the row count), so the inner loop runs long enough for LLVM to
# vectorise it (at C = 16 a row-by-row loop ran 7x slower per value than at C = 64, Intel Xeon);
# per-channel coefficients are repeated f times, per-channel sums folded back at the end. From
# WIDE channels up f = 1, the loops are row by row and their sums in the same order as before.
WIDE = 64


@njit(**_JIT)
def _fold(r, nc, contiguous):
    """How many rows of nc channels make one wide row (a divisor of r; 1 unless the arrays are
    all C-contiguous: a channels-last view of channels-first memory reaches here in Fortran
    order, which a fold would scramble)."""
    f = max(1, WIDE // nc) if contiguous else 1
    while r % f:
        f -= 1
    return f


@njit(**_JIT)
def _repeat(a, f):
    """a (C,) -> (f*C,): a repeated f times, for wide rows of f pixels."""
    nc = a.shape[0]
    out = numpy.empty(f * nc, dtype=a.dtype)
    for j in range(f * nc):
        out[j] = a[j % nc]
    return out


@njit(**_JIT)
def bn_centered_sums(z, out):
    """z (R, C) -> out (3, C) float64: the column means a, sum(z - a) and sum((z - a)^2)."""
    r, nc = z.shape
    f = _fold(r, nc, z.flags.c_contiguous)
    wz = z.reshape(r // f, f * nc)
    acc = numpy.zeros((2, f * nc), dtype=numpy.float64)
    for i in range(r // f):
        for j in range(f * nc):
            acc[0, j] += wz[i, j]
    for c in range(nc):
        out[0, c] = 0.0
        out[1, c] = 0.0
        out[2, c] = 0.0
    for j in range(f * nc):
        out[0, j % nc] += acc[0, j]
        acc[0, j] = 0.0
    for c in range(nc):
        out[0, c] /= r
    a = _repeat(out[0], f)
    for i in range(r // f):
        for j in range(f * nc):
            d = wz[i, j] - a[j]
            acc[0, j] += d
            acc[1, j] += d * d
    for j in range(f * nc):
        out[1, j % nc] += acc[0, j]
        out[2, j % nc] += acc[1, j]


@njit(**_JIT)
def bn_affine_relu(z, scale, shift, y):
    """y <- max(z * scale + shift, 0); z, y (R, C) (may be the same array)."""
    r, nc = z.shape
    f = _fold(r, nc, z.flags.c_contiguous and y.flags.c_contiguous)
    wz, wy = z.reshape(r // f, f * nc), y.reshape(r // f, f * nc)
    ws, wb = _repeat(scale, f), _repeat(shift, f)
    zero = scale[0] - scale[0]
    for i in range(r // f):
        for j in range(f * nc):
            v = wz[i, j] * ws[j] + wb[j]
            wy[i, j] = v if v > zero else zero


@njit(**_JIT)
def bn_affine_relu_pool(z, scale, shift, p):
    """p <- 2x2 stride-2 max of max(z * scale + shift, 0); z (k, H, W, C), p (k, H//2, W//2, C).
    (The max of the four before the ReLU: the ReLU commutes with it exactly.)"""
    k, ho, wo, nc = p.shape
    zero = scale[0] - scale[0]
    for n in range(k):
        for i in range(ho):
            for j in range(wo):
                for c in range(nc):
                    a = z[n, 2 * i, 2 * j, c] * scale[c] + shift[c]
                    b = z[n, 2 * i, 2 * j + 1, c] * scale[c] + shift[c]
                    d = z[n, 2 * i + 1, 2 * j, c] * scale[c] + shift[c]
                    e = z[n, 2 * i + 1, 2 * j + 1, c] * scale[c] + shift[c]
                    m = max(max(a, b), max(d, e))
                    p[n, i, j, c] = m if m > zero else zero


@njit(**_JIT)
def bn_relu_grad_sums(dout, y, z, mean, g, sums):
    """g <- dout where y > 0, else 0; sums (2, C) float64 += sum(g), sum(g * (z - mean)).
    All (R, C) but mean (C,)."""
    r, nc = z.shape
    f = _fold(r, nc, dout.flags.c_contiguous and y.flags.c_contiguous and z.flags.c_contiguous
              and g.flags.c_contiguous)
    m = r // f
    wd, wy, wz, wg = dout.reshape(m, f * nc), y.reshape(m, f * nc), z.reshape(m, f * nc), g.reshape(m, f * nc)
    wm = _repeat(mean, f)
    acc = numpy.zeros((2, f * nc), dtype=numpy.float64)
    zero = mean[0] - mean[0]
    for i in range(m):
        for j in range(f * nc):
            v = wd[i, j] if wy[i, j] > zero else zero
            wg[i, j] = v
            acc[0, j] += v
            acc[1, j] += v * (wz[i, j] - wm[j])
    for j in range(f * nc):
        sums[0, j % nc] += acc[0, j]
        sums[1, j % nc] += acc[1, j]


@njit(**_JIT)
def bn_pool_relu_grad_sums(dout, p, z, scale, shift, mean, g, sums):
    """The pooled block's g (k, H, W, C) <- each 2x2 window's dout (k, H//2, W//2, C) to its first
    position (row-major) where the remade y = z * scale + shift equals the pooled maximum p, if
    that maximum is positive (0 elsewhere, and in odd edge rows and columns); sums (2, C) float64
    += sum(g), sum(g * (z - mean))."""
    k, h, w, nc = z.shape
    ho, wo = p.shape[1], p.shape[2]
    zero = mean[0] - mean[0]
    for n in range(k):
        for y in range(2 * ho, h):
            for x in range(w):
                for c in range(nc):
                    g[n, y, x, c] = zero
        for y in range(2 * ho):
            for x in range(2 * wo, w):
                for c in range(nc):
                    g[n, y, x, c] = zero
        for i in range(ho):
            for j in range(wo):
                for c in range(nc):
                    m = p[n, i, j, c]
                    d = dout[n, i, j, c] if m > zero else zero
                    z0, z1 = z[n, 2 * i, 2 * j, c], z[n, 2 * i, 2 * j + 1, c]
                    z2, z3 = z[n, 2 * i + 1, 2 * j, c], z[n, 2 * i + 1, 2 * j + 1, c]
                    h0 = z0 * scale[c] + shift[c] == m
                    h1 = (not h0) and z1 * scale[c] + shift[c] == m
                    h2 = (not (h0 or h1)) and z2 * scale[c] + shift[c] == m
                    h3 = not (h0 or h1 or h2)
                    g0 = d if h0 else zero
                    g1 = d if h1 else zero
                    g2 = d if h2 else zero
                    g3 = d if h3 else zero
                    g[n, 2 * i, 2 * j, c] = g0
                    g[n, 2 * i, 2 * j + 1, c] = g1
                    g[n, 2 * i + 1, 2 * j, c] = g2
                    g[n, 2 * i + 1, 2 * j + 1, c] = g3
                    sums[0, c] += d
                    mc = mean[c]
                    sums[1, c] += g0 * (z0 - mc) + g1 * (z1 - mc) + g2 * (z2 - mc) + g3 * (z3 - mc)


@njit(**_JIT)
def bn_input_grad(g, z, ca, cb, cc, sums):
    """dz <- ca * g + cb * z + cc in g's memory; sums (C,) float64 += sum(dz). (R, C) but the
    coefficients (C,)."""
    r, nc = z.shape
    f = _fold(r, nc, g.flags.c_contiguous and z.flags.c_contiguous)
    wg, wz = g.reshape(r // f, f * nc), z.reshape(r // f, f * nc)
    wa, wb, wc = _repeat(ca, f), _repeat(cb, f), _repeat(cc, f)
    acc = numpy.zeros(f * nc, dtype=numpy.float64)
    for i in range(r // f):
        for j in range(f * nc):
            v = wg[i, j] * wa[j] + wz[i, j] * wb[j] + wc[j]
            wg[i, j] = v
            acc[j] += v
    for j in range(f * nc):
        sums[j % nc] += acc[j]


# -- the optimizer's update over one parameter (``optim``) ---------------------------------------
# The same float32 operations in the same order as optim's NumPy forms (no fused multiply-add:
# fastmath is off), so both paths give the same bits; one pass instead of six to nine.


@njit(**_JIT)
def sgd(p, g, lr, wd):
    """``optim._sgd`` over flat (n,) arrays: p <- p - lr * (g + wd * p)."""
    for i in range(p.shape[0]):
        p[i] = p[i] - lr * (g[i] + wd * p[i])


@njit(**_JIT)
def sgd_momentum(p, g, buf, lr, wd, momentum):
    """``optim._sgd_momentum`` over flat (n,) arrays."""
    for i in range(p.shape[0]):
        b = buf[i] * momentum + (g[i] + wd * p[i])
        buf[i] = b
        p[i] = p[i] - lr * b


@njit(**_JIT)
def sgd_nesterov(p, g, buf, lr, wd, momentum):
    """``optim._sgd_nesterov`` over flat (n,) arrays."""
    for i in range(p.shape[0]):
        d = g[i] + wd * p[i]
        b = buf[i] * momentum + d
        buf[i] = b
        p[i] = p[i] - lr * (d + momentum * b)


LOOPS = (
    wino2_input, wino2_input_adjoint, wino2_output, wino2_output_adjoint,
    wino4_input, wino4_input_adjoint, wino4_output, wino4_output_adjoint,
    bn_centered_sums, bn_affine_relu, bn_affine_relu_pool, bn_relu_grad_sums, bn_pool_relu_grad_sums, bn_input_grad,
    sgd, sgd_momentum, sgd_nesterov,
)


# The order a ResNet-9 train step first calls the loops (recorded with an empty cache, fast preset;
# the default recipe's widths choose the same loops): its forward pass, its backward pass, then the
# optimizer's update. F(2x2, 3x3)'s loops serve narrower layers and plain SGD the other recipes.
STEP_ORDER = (
    "bn_centered_sums", "bn_affine_relu", "wino4_input", "wino4_output", "bn_affine_relu_pool",
    "bn_relu_grad_sums", "bn_input_grad", "bn_pool_relu_grad_sums", "wino4_output_adjoint", "wino4_input_adjoint",
    "sgd_nesterov",
)
ALL_ORDER = ("wino2_input", "wino2_output", "wino2_output_adjoint", "wino2_input_adjoint") + STEP_ORDER[:-1] + (
    "sgd", "sgd_momentum", "sgd_nesterov")


def _calls(dtype):
    """name -> a call of that loop on tiny C-contiguous arrays of ``dtype``, the layouts and
    scalar types the kernels pass (so a call compiles, or loads, exactly what a run uses)."""
    coef = numpy.array((2, 4, 5, 8), dtype=dtype)
    xpad = numpy.zeros((1, 6, 6, 2), dtype=dtype)
    u = numpy.zeros((36, 1, 1, 1, 2), dtype=dtype)
    out = numpy.zeros((1, 4, 4, 2), dtype=dtype)
    u2, xpad2, out2 = u[:16].copy(), xpad[:, :4, :4].copy(), out[:, :2, :2].copy()
    c = numpy.ones(2, dtype=dtype)
    rows = out.reshape(-1, 2)
    p = numpy.zeros((1, 2, 2, 2), dtype=dtype)
    flat, one = rows.reshape(-1), c[0]
    return dict(
        wino4_input=lambda: wino4_input(xpad, u, coef),
        wino4_input_adjoint=lambda: wino4_input_adjoint(u, xpad, coef),
        wino4_output=lambda: wino4_output(u, out, coef),
        wino4_output_adjoint=lambda: wino4_output_adjoint(out, u, coef),
        wino2_input=lambda: wino2_input(xpad2, u2),
        wino2_input_adjoint=lambda: wino2_input_adjoint(u2, xpad2),
        wino2_output=lambda: wino2_output(u2, out2),
        wino2_output_adjoint=lambda: wino2_output_adjoint(out2, u2),
        bn_centered_sums=lambda: bn_centered_sums(rows, numpy.zeros((3, 2))),
        bn_affine_relu=lambda: bn_affine_relu(rows, c, c, rows),
        bn_affine_relu_pool=lambda: bn_affine_relu_pool(out, c, c, p),
        bn_relu_grad_sums=lambda: bn_relu_grad_sums(rows, rows, rows, c, rows.copy(), numpy.zeros((2, 2))),
        bn_pool_relu_grad_sums=lambda: bn_pool_relu_grad_sums(p, p, out, c, c, c, out.copy(), numpy.zeros((2, 2))),
        bn_input_grad=lambda: bn_input_grad(rows.copy(), rows, c, c, c, numpy.zeros(2)),
        sgd=lambda: sgd(flat, flat.copy(), one, one),
        sgd_momentum=lambda: sgd_momentum(flat, flat.copy(), flat.copy(), one, one, one),
        sgd_nesterov=lambda: sgd_nesterov(flat, flat.copy(), flat.copy(), one, one, one),
    )


def warm_up(dtype, names=ALL_ORDER):
    """Compile the loops ``names``, in that order, for ``dtype`` (or load them from Numba's
    cache)."""
    calls = _calls(dtype)
    for name in names:
        calls[name]()


def compiled(name):
    """How many signatures of loop ``name`` this process has compiled (rather than loaded from
    the cache)."""
    return sum(globals()[name].stats.cache_misses.values())
