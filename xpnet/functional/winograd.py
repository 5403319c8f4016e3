"""Winograd's minimal filtering F(2x2, 3x3): a 3x3, stride-1, padding-1 convolution in 2.25x
fewer multiplications than im2col + GEMM, on channels-last arrays.

The output is cut into 2x2 tiles; tile (i, j) reads the 4x4 patch of the zero-padded input that
starts at padded row 2i, column 2j. With the transforms of Lavin & Gray (2016),

    Y = A^T [ (G g G^T) (*) (B^T d B) ] A        (*): elementwise over the 4x4 taps

for one channel pair. Summed over input channels, each of the 16 taps becomes one GEMM over all
tiles: ``M[tap] = U[tap] @ W[tap]`` with ``U[tap]`` (tiles, C) and ``W[tap]`` (C, O). The data
transforms hold only 0 and +-1 (B, A), so they run as a few adds and subtracts over strided
views, separably along columns and then rows; the kernel transform (G, with halves) is one small
GEMM over the weights.

Gradients, both from ``V = A dY A^T`` (the adjoint of the output transform):
* weight: ``dW[tap] = V[tap]^T @ U[tap]`` (O, C), and ``dg = G^T dW G`` per channel pair (the
  adjoint of the kernel transform);
* input: ``dU[tap] = V[tap] @ W[tap]^T`` (tiles, C), then the adjoint of the input transform,
  ``B dU B^T`` added back onto the overlapping 4x4 patches.

Every ``*_into`` function works on images ``n0:n1`` of a batch and writes into buffers the caller
provides (sized for ``nb >= n1 - n0`` images), so the fused kernels can run it chunk by chunk.
"""

from __future__ import annotations

import functools

import numpy

from xpnet import backend
from xpnet.backend import get_array_module
from xpnet.functional import jit
from xpnet.functional.parallel import for_chunks, workers

# Coefficients, all in {-1, 0, 1} for the data transforms.
BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))  # 4x4: input tile -> taps
AT = ((1, 1, 1, 0), (0, 1, -1, -1))  # 2x4: taps -> output tile
A = tuple(zip(*AT))  # 4x2: output-tile gradient -> taps (the adjoint of AT)
G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))  # 4x3: kernel -> taps


def tiles(h, w):
    """Tiles (rows, columns) that cover an (h, w) output."""
    return (h + 1) // 2, (w + 1) // 2


def kernel_map(dtype):
    """(16, 9) host array: row 4a+b maps a kernel (3x3, flattened) to its tap (a, b) of ``G g G^T``."""
    g = numpy.asarray(G, dtype=dtype)
    return numpy.kron(g, g)


def weight_transform(w, k=None):
    """w: (O, C, 3, 3) -> (16, O, C), tap-major: ``G w G^T`` of every channel pair, as a GEMM
    with the kernels' 9 taps as its inner dimension. ``k``: ``kernel_map`` on w's backend, if
    the caller keeps one (else it is made and moved here)."""
    xp = get_array_module(w)
    o, c = w.shape[:2]
    k = xp.asarray(kernel_map(w.dtype)) if k is None else k
    out = xp.empty((16, o, c), dtype=w.dtype)

    # Split over output channels on the kernels' threads: a BLAS call of its own threads here
    # would leave them spinning into the chunk loop that follows.
    def body(t, o0, o1):
        xp.matmul(k, w[o0:o1].reshape(-1, 9).T, out=out[:, o0:o1].reshape(16, -1))

    for_chunks(xp, o, -(-o // workers(xp)), body)
    return out


def weight_transform_adjoint(du, k=None):
    """du: (16, O, C) -> (O, C, 3, 3): the gradient of ``weight_transform``'s input."""
    xp = get_array_module(du)
    _, o, c = du.shape
    k = xp.asarray(kernel_map(du.dtype)) if k is None else k
    out = xp.empty((o, c, 3, 3), dtype=du.dtype)

    def body(t, o0, o1):
        xp.matmul(du[:, o0:o1].reshape(16, -1).T, k, out=out[o0:o1].reshape(-1, 9))

    for_chunks(xp, o, -(-o // workers(xp)), body)
    return out


@functools.lru_cache(maxsize=None)
def _combination(rows):
    """An elementwise function ``(*srcs, *outs)`` that writes ``outs[i] <- sum_k rows[i][k] *
    srcs[k]`` (coefficients in {-1, 0, 1}) by adds and subtracts, for ``backend.fuse``: several
    outputs of one transform pass in one kernel on a GPU. Cached, so each pattern is compiled once."""
    k = len(rows[0])

    def combination(*args):
        xp = backend.xp()
        srcs, outs = args[:k], args[k:]
        for row, out in zip(rows, outs):
            terms = [(c, s) for c, s in zip(row, srcs) if c]
            acc = None
            for c, s in terms[:-1]:
                if acc is None:
                    acc = s if c > 0 else -s
                else:
                    acc = acc + s if c > 0 else acc - s
            c, s = terms[-1]
            if acc is None:
                (xp.positive if c > 0 else xp.negative)(s, out)
            else:
                (xp.add if c > 0 else xp.subtract)(acc, s, out)

    return combination


def _combine_all(xp, rows, srcs, outs):
    """outs[i] <- sum_k rows[i][k] * srcs[k]; the outputs share a shape and are not sources.
    On the CPU a chain of in-place passes per output; on a GPU one fused kernel for them all."""
    if xp is numpy:
        for row, out in zip(rows, outs):
            _combine(xp, row, srcs, out)
        return
    backend.fuse(_combination(tuple(tuple(r) for r in rows)))(*srcs, *outs)


def _combine(xp, coefs, srcs, out):
    """out <- sum_k coefs[k] * srcs[k], for coefficients in {-1, 0, 1}; ``out`` is not a source."""
    if xp is not numpy:
        _combine_all(xp, (coefs,), srcs, (out,))
        return
    terms = [(c, s) for c, s in zip(coefs, srcs) if c]
    (c0, s0), rest = terms[0], terms[1:]
    if not rest:
        if c0 > 0:
            xp.copyto(out, s0)
        else:
            xp.negative(s0, out=out)
        return
    (c1, s1), rest = rest[0], rest[1:]
    if c0 > 0:
        (xp.add if c1 > 0 else xp.subtract)(s0, s1, out=out)
    elif c1 > 0:
        xp.subtract(s1, s0, out=out)
    else:
        xp.add(s0, s1, out=out)
        xp.negative(out, out=out)
    for c, s in rest:
        (xp.add if c > 0 else xp.subtract)(out, s, out=out)


def input_transform_into(x, n0, n1, xpad, cols, u):
    """The 16 tap matrices of images ``n0:n1``.

    x: (N, H, W, C); xpad: (nb, 2th+2, 2tw+2, C) scratch whose border the caller keeps zero (only
    the interior ``[1:H+1, 1:W+1]`` is written); cols: (4, nb, 2th+2, tw, C) scratch;
    u: (4, 4, nb, th, tw, C) out, of which ``u[:, :, :n1-n0]`` is filled.
    """
    xp = get_array_module(x)
    k = n1 - n0
    h, w = x.shape[1], x.shape[2]
    th, tw = u.shape[3], u.shape[4]
    xpad[:k, 1 : h + 1, 1 : w + 1] = x[n0:n1]
    # Columns first: its strided reads touch only C contiguous values at a time, so it goes on
    # the smaller array; the row pass then reads whole rows.
    src = [xpad[:k, :, j : j + 2 * tw : 2] for j in range(4)]
    _combine_all(xp, BT, src, [cols[s, :k] for s in range(4)])
    src = [cols[:, :k, i : i + 2 * th : 2] for i in range(4)]
    _combine_all(xp, BT, src, [u[r, :, :k] for r in range(4)])


def _windows_adjoint(xp, src, dst, axis):
    """The adjoint of reading 4-wide windows at stride 2 along ``axis`` and combining them by
    ``BT``: dst (length 2T+2 along ``axis``) <- sum over taps r and windows p of
    ``BT[r][i] * src[r][p]`` at position 2p + i. Windows overlap by two, so each position gathers
    from two windows; every position of ``dst`` is written."""
    t = src[0].shape[axis]
    lead = (slice(None),) * axis
    for parity in (0, 1):
        coefs = [BT[r][parity] for r in range(4)]
        _combine(xp, coefs, src, dst[lead + (slice(parity, parity + 2 * t, 2),)])
        dst[lead + (slice(parity + 2 * t, parity + 2 * t + 1),)] = 0.0
        tail = dst[lead + (slice(parity + 2, parity + 2 * t + 2, 2),)]
        if xp is not numpy:  # tail += sum_r BT[r][parity + 2] * src[r], in one kernel
            row = (1,) + tuple(BT[r][parity + 2] for r in range(4))
            backend.fuse(_combination((row,)))(tail, *src, tail)
            continue
        for r in range(4):
            c = BT[r][parity + 2]
            if c:
                (xp.add if c > 0 else xp.subtract)(tail, src[r], out=tail)


def input_transform_adjoint_into(du, dcols, dxpad, out):
    """The adjoint of ``input_transform_into``: du (4, 4, n, th, tw, C) -> out (n, H, W, C).

    dcols: (4, nb, 2th+2, tw, C) and dxpad: (nb, 2th+2, 2tw+2, C) scratch, overwritten.
    """
    xp = get_array_module(du)
    k = du.shape[2]
    h, w = out.shape[1], out.shape[2]
    _windows_adjoint(xp, [du[r] for r in range(4)], dcols[:, :k], axis=2)  # rows
    _windows_adjoint(xp, [dcols[s, :k] for s in range(4)], dxpad[:k], axis=2)  # columns
    out[...] = dxpad[:k, 1 : h + 1, 1 : w + 1]


def output_transform_into(m, out, scratch):
    """m: (4, 4, n, th, tw, O) tap products -> out: (n, H, W, O), any strides.

    scratch: (2, 4, nb >= n, th, tw, O). Output rows and columns past H, W are dropped.
    """
    xp = get_array_module(m)
    k = m.shape[2]
    s = scratch[:, :, :k]
    _combine_all(xp, AT, [m[r] for r in range(4)], [s[a] for a in range(2)])
    for a in range(2):
        for b in range(2):
            dst = out[:, a::2, b::2]
            ra, cb = dst.shape[1], dst.shape[2]
            _combine(xp, AT[b], [s[a, j, :, :ra, :cb] for j in range(4)], dst)


def output_transform_adjoint_into(dy, dypad, cols, v):
    """The adjoint of ``output_transform_into``: dy (n, H, W, O) -> v[:, :, :n] (4, 4, nb, th, tw, O).

    dypad: (nb, 2th, 2tw, O) scratch with a zero margin past H, W (used, and needed, only when H
    or W is odd);
    cols: (4, nb, 2th, tw, O) scratch.
    """
    xp = get_array_module(dy)
    k, h, w = dy.shape[:3]
    th, tw = v.shape[3], v.shape[4]
    if (h, w) != (2 * th, 2 * tw):
        dypad[:k, :h, :w] = dy
        dy = dypad[:k]
    src = [dy[:, :, b::2] for b in range(2)]
    _combine_all(xp, A, src, [cols[s, :k] for s in range(4)])
    src = [cols[:, :k, a::2] for a in range(2)]
    _combine_all(xp, A, src, [v[r, :, :k] for r in range(4)])


class Winograd3x3:
    """The convolution steps of a fused 3x3 block by F(2x2, 3x3), on chunks of images.

    One plan serves one call of a fused kernel on a batch of (N, H, W, C) -> (N, H, W, O); its
    scratch comes from workspace ``ws`` per thread index ``t``. Weights are transformed once per
    call by ``weights``; the backward pass uses the forward's.
    """

    def __init__(self, h, w, c, o, nb, ws, dtype):
        self.h, self.w, self.c, self.o, self.nb, self.ws, self.dtype = h, w, c, o, nb, ws, dtype
        self.th, self.tw = tiles(h, w)
        self.dw_shape = (16, o, c)

    @staticmethod
    def image_bytes(h, w, c, o, itemsize):
        """Scratch bytes per image of a chunk (tap inputs and products, both directions)."""
        th, tw = tiles(h, w)
        return 16 * th * tw * (c + o) * itemsize

    def _kernel_map(self, xp):
        return self.ws.constant(xp, "wino.kernel_map", self.dtype, lambda: kernel_map(self.dtype))

    def weights(self, w):
        """w: (O, C, 3, 3) -> the (16, C, O) tap matrices, a view of (16, O, C) memory."""
        return weight_transform(w, self._kernel_map(get_array_module(w))).transpose(0, 2, 1)

    def _buf(self, xp, name, t, shape, zero=False):
        """Scratch of thread ``t``. One name serves several steps that never overlap."""
        return self.ws.get(xp, f"wino.{name}.{t}", shape, self.dtype, zero=zero)

    def _taps(self, xp, x, n0, n1, t):
        """u[:, :, :k] for images n0:n1 of x (N, H, W, C), as (16, k*th*tw, C)."""
        c, nb, th, tw = x.shape[3], self.nb, self.th, self.tw
        xpad = self._buf(xp, "xpad", t, (nb, 2 * th + 2, 2 * tw + 2, c), zero=True)
        loop = jit.kernel("wino2_input") if xp is numpy else None
        if loop is not None:  # one compiled pass into C-contiguous taps (16, k, th, tw, C)
            k = n1 - n0
            xpad[:k, 1 : self.h + 1, 1 : self.w + 1] = x[n0:n1]
            u = self._buf(xp, "u", t, (16, k, th, tw, c))
            loop(xpad[:k], u)
            return u.reshape(16, k * th * tw, c)
        cols = self._buf(xp, "cols", t, (4, nb, 2 * th + 2, tw, c))
        u = self._buf(xp, "u", t, (4, 4, nb, th, tw, c))
        input_transform_into(x, n0, n1, xpad, cols, u)
        return u[:, :, : n1 - n0].reshape(16, (n1 - n0) * th * tw, c)

    def forward_into(self, x, n0, n1, wt, out, t):
        """out (k, H, W, O) <- conv of images n0:n1 of x (N, H, W, C) with tap matrices ``wt``
        (16, C, O) from ``weights``."""
        xp = get_array_module(x)
        k, nb, th, tw, o = n1 - n0, self.nb, self.th, self.tw, self.o
        u = self._taps(xp, x, n0, n1, t)
        loop = jit.kernel("wino2_output") if xp is numpy else None
        if loop is not None:
            m = self._buf(xp, "m", t, (16, k, th, tw, o))
            xp.matmul(u, wt, out=m.reshape(16, k * th * tw, o))
            loop(m, out)
            return
        m = self._buf(xp, "m", t, (4, 4, nb, th, tw, o))
        xp.matmul(u, wt, out=m[:, :, :k].reshape(16, k * th * tw, o))
        scratch = self._buf(xp, "cols", t, (2, 4, nb, th, tw, o))  # the taps' scratch is free again
        output_transform_into(m[:, :, :k], out, scratch)

    def backward_into(self, x, dz, n0, n1, wt, dw_out, dx_out, t):
        """Gradients of images n0:n1 from dz (k, H, W, O), with the forward's tap matrices ``wt``:
        dw_out (16, O, C) <- their weight gradient in tap form (``V^T U`` per tap); dx_out
        (k, H, W, C) <- their input gradient, the input transform's adjoint of ``V @ W^T`` per tap
        (skipped when None)."""
        xp = get_array_module(x)
        k, nb, th, tw, c, o = n1 - n0, self.nb, self.th, self.tw, self.c, self.o
        r = k * th * tw
        u = self._taps(xp, x, n0, n1, t)
        if xp is numpy and jit.kernel("wino2_output_adjoint") is not None:
            self._backward_compiled(dz, k, u, wt, dw_out, dx_out, t)
            return
        odd = (self.h, self.w) != (2 * th, 2 * tw)
        dypad = self._buf(xp, "dypad", t, (nb, 2 * th, 2 * tw, o), zero=True) if odd else None
        cols = self._buf(xp, "cols", t, (4, nb, 2 * th, tw, o))  # the taps' scratch is free again
        v = self._buf(xp, "m", t, (4, 4, nb, th, tw, o))  # the forward's products are not needed here
        output_transform_adjoint_into(dz, dypad, cols, v)
        v = v[:, :, :k].reshape(16, r, o)
        xp.matmul(v.transpose(0, 2, 1), u, out=dw_out)
        if dx_out is None:
            return
        du = self._buf(xp, "u", t, (4, 4, nb, th, tw, c))  # the input's taps are used up
        xp.matmul(v, wt.transpose(0, 2, 1), out=du[:, :, :k].reshape(16, r, c))
        dcols = self._buf(xp, "cols", t, (4, nb, 2 * th + 2, tw, c))
        dxpad = self._buf(xp, "dxpad", t, (nb, 2 * th + 2, 2 * tw + 2, c))
        input_transform_adjoint_into(du[:, :, :k], dcols, dxpad, dx_out)

    def _backward_compiled(self, dz, k, u, wt, dw_out, dx_out, t):
        """``backward_into`` with the compiled transforms, on C-contiguous (16, k, th, tw, .) taps."""
        th, tw, c, o = self.th, self.tw, self.c, self.o
        v = self._buf(numpy, "m", t, (16, k, th, tw, o))
        jit.kernel("wino2_output_adjoint")(numpy.ascontiguousarray(dz), v)
        v = v.reshape(16, k * th * tw, o)
        numpy.matmul(v.transpose(0, 2, 1), u, out=dw_out)
        if dx_out is None:
            return
        du = self._buf(numpy, "u", t, (16, k, th, tw, c))  # the input's taps are used up
        numpy.matmul(v, wt.transpose(0, 2, 1), out=du.reshape(16, k * th * tw, c))
        dxpad = self._buf(numpy, "dxpad", t, (k, 2 * th + 2, 2 * tw + 2, c))
        jit.kernel("wino2_input_adjoint")(du, dxpad)
        dx_out[...] = dxpad[:, 1 : self.h + 1, 1 : self.w + 1]

    def dw_finish(self, dwt):
        """(16, O, C) summed over chunks -> (O, C, 3, 3)."""
        return weight_transform_adjoint(dwt, self._kernel_map(get_array_module(dwt)))
