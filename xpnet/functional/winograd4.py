"""Winograd's minimal filtering F(4x4, 3x3): a 3x3, stride-1, padding-1 convolution in 4x fewer
multiplications than im2col + GEMM (F(2x2, 3x3), ``winograd``, does 2.25x fewer), on
channels-last arrays.

The output is cut into 4x4 tiles; tile (i, j) reads the 6x6 patch of the zero-padded input that
starts at padded row 4i, column 4j. With the transforms of Lavin & Gray (2016),

    Y = AT [ (G g G^T) (*) (BT d BT^T) ] AT^T        (*): elementwise over the 6x6 taps

and summed over input channels each of the 36 taps is one GEMM over all tiles, ``M[tap] =
U[tap] @ W[tap]``, as in F(2x2, 3x3); the gradients follow the same steps as there (see
``winograd``): ``V = A dY A^T``, ``dW[tap] = V[tap]^T U[tap]``, ``dU[tap] = V[tap] W[tap]^T`` and
the input transform's adjoint added back onto the overlapping 6x6 patches.

The GEMMs shrink by 16/9 against F(2x2, 3x3) and the tap arrays by the same factor (36 taps
per 16 outputs against 16 per 4), but the transforms' coefficients are no longer only +-1
(BT holds 4 and 5, AT 2, 4 and 8) and its float32 rounding error is larger (bounded in
tests/functional/test_winograd4.py). Each transform is one compiled pass per chunk
(``jit``, Numba); without Numba it runs as NumPy contractions over strided tile views, correct
but slower than F(2x2, 3x3)'s passes, so ``fused.conv3x3_method`` picks F(4x4, 3x3) only where
the compiled loops are there.
"""

from __future__ import annotations

import numpy
from numpy.lib.stride_tricks import as_strided

from xpnet.backend import get_array_module
from xpnet.functional import jit
from xpnet.functional.parallel import for_chunks, workers

BT4 = (
    (4, 0, -5, 0, 1, 0),
    (0, -4, -4, 1, 1, 0),
    (0, 4, -4, -1, 1, 0),
    (0, -2, -1, 2, 1, 0),
    (0, 2, -1, -2, 1, 0),
    (0, 4, 0, -5, 0, 1),
)  # 6x6: input tile -> taps
AT4 = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))  # 4x6
G4 = (
    (1 / 4, 0.0, 0.0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0.0, 0.0, 1.0),
)  # 6x3: kernel -> taps


def tiles(h, w):
    """Tiles (rows, columns) that cover an (h, w) output."""
    return (h + 3) // 4, (w + 3) // 4


def kernel_map(dtype):
    """(36, 9) host array: row 6a+b maps a kernel (3x3, flattened) to its tap (a, b) of ``G g G^T``
    (the products formed in float64, then rounded once)."""
    g = numpy.asarray(G4, dtype=numpy.float64)
    return numpy.kron(g, g).astype(dtype)


def weight_transform(w, k):
    """w: (O, C, 3, 3) -> (36, O, C), tap-major, with ``k`` = ``kernel_map`` on w's backend."""
    xp = get_array_module(w)
    o, c = w.shape[:2]
    out = xp.empty((36, o, c), dtype=w.dtype)

    def body(t, o0, o1):
        xp.matmul(k, w[o0:o1].reshape(-1, 9).T, out=out[:, o0:o1].reshape(36, -1))

    for_chunks(xp, o, -(-o // workers(xp)), body)
    return out


def weight_transform_adjoint(du, k):
    """du: (36, O, C) -> (O, C, 3, 3): the gradient of ``weight_transform``'s input."""
    xp = get_array_module(du)
    _, o, c = du.shape
    out = xp.empty((o, c, 3, 3), dtype=du.dtype)

    def body(t, o0, o1):
        xp.matmul(du[:, o0:o1].reshape(36, -1).T, k, out=out[o0:o1].reshape(-1, 9))

    for_chunks(xp, o, -(-o // workers(xp)), body)
    return out


def _tile_view(a, th, tw, size, step):
    """a: (k, >= step*th + size - step, ..., C) -> (k, th, tw, size, size, C) view of its tiles."""
    s = a.strides
    shape = (a.shape[0], th, tw, size, size, a.shape[3])
    return as_strided(a, shape, (s[0], step * s[1], step * s[2], s[1], s[2], s[3]))


# -- the transforms: compiled loops, or NumPy contractions over tile views -----------------------


def _coef(ws, dtype):
    return ws.constant(numpy, "wino4.coef", dtype, lambda: numpy.array((2, 4, 5, 8)))


def input_transform(xpad, u, coef):
    """xpad (k, 4th+2, 4tw+2, C) zero-bordered -> u (36, k, th, tw, C), C-contiguous."""
    loop = jit.kernel("wino4_input")
    if loop is not None:
        loop(xpad, u, coef)
        return
    k, th, tw = u.shape[1:4]
    bt = numpy.asarray(BT4, dtype=u.dtype)
    d = _tile_view(xpad, th, tw, 6, 4)
    u.reshape(6, 6, *u.shape[1:])[...] = numpy.einsum("ra,sb,nijabc->rsnijc", bt, bt, d, optimize=True)


def input_transform_adjoint(du, dxpad, coef):
    """The adjoint of ``input_transform``: du (36, k, th, tw, C) -> dxpad (k, 4th+2, 4tw+2, C),
    overwritten."""
    loop = jit.kernel("wino4_input_adjoint")
    if loop is not None:
        loop(du, dxpad, coef)
        return
    k, th, tw = du.shape[1:4]
    bt = numpy.asarray(BT4, dtype=du.dtype)
    e = numpy.einsum("ra,sb,rsnijc->nijabc", bt, bt, du.reshape(6, 6, *du.shape[1:]), optimize=True)
    dxpad.fill(0.0)
    for a in range(6):
        for b in range(6):
            dxpad[:, a : a + 4 * th : 4, b : b + 4 * tw : 4] += e[:, :, :, a, b]


def output_transform(m, out, coef):
    """m (36, k, th, tw, O) -> out (k, H, W, O), C-contiguous; rows and columns past H, W dropped."""
    loop = jit.kernel("wino4_output")
    if loop is not None:
        loop(m, out, coef)
        return
    k, th, tw, o = m.shape[1:]
    at = numpy.asarray(AT4, dtype=m.dtype)
    y = numpy.einsum("ar,bs,rsnijo->niajbo", at, at, m.reshape(6, 6, *m.shape[1:]), optimize=True)
    out[...] = y.reshape(k, 4 * th, 4 * tw, o)[:, : out.shape[1], : out.shape[2]]


def output_transform_adjoint(dy, v, coef):
    """The adjoint of ``output_transform``: dy (k, H, W, O) -> v (36, k, th, tw, O)."""
    loop = jit.kernel("wino4_output_adjoint")
    if loop is not None:
        loop(dy, v, coef)
        return
    k, th, tw, o = v.shape[1:]
    h, w = dy.shape[1], dy.shape[2]
    if (h, w) != (4 * th, 4 * tw):
        pad = numpy.zeros((k, 4 * th, 4 * tw, o), dtype=dy.dtype)
        pad[:, :h, :w] = dy
        dy = pad
    at = numpy.asarray(AT4, dtype=v.dtype)
    v.reshape(6, 6, *v.shape[1:])[...] = numpy.einsum(
        "ar,bs,niajbo->rsnijo", at, at, dy.reshape(k, th, 4, tw, 4, o), optimize=True
    )


class Winograd4x4:
    """The convolution steps of a fused 3x3 block by F(4x4, 3x3), on chunks of images: the
    interface of ``winograd.Winograd3x3`` (CPU only)."""

    def __init__(self, h, w, c, o, nb, ws, dtype):
        self.h, self.w, self.c, self.o, self.nb, self.ws, self.dtype = h, w, c, o, nb, ws, dtype
        self.th, self.tw = tiles(h, w)
        self.dw_shape = (36, o, c)
        self.coef = _coef(ws, dtype)

    @staticmethod
    def image_bytes(h, w, c, o, itemsize):
        """Scratch bytes per image of a chunk (tap inputs and products)."""
        th, tw = tiles(h, w)
        return 36 * th * tw * (c + o) * itemsize

    def _kernel_map(self, xp):
        return self.ws.constant(xp, "wino4.kernel_map", self.dtype, lambda: kernel_map(self.dtype))

    def weights(self, w):
        """w: (O, C, 3, 3) -> the (36, C, O) tap matrices, a view of (36, O, C) memory."""
        return weight_transform(w, self._kernel_map(get_array_module(w))).transpose(0, 2, 1)

    def _buf(self, name, t, shape, zero=False):
        """Scratch of thread ``t`` (C-contiguous, as the compiled loops want); the names are
        F(2x2, 3x3)'s, so the layers of a model share this memory whichever plan they run."""
        return self.ws.get(numpy, f"wino.{name}.{t}", shape, self.dtype, zero=zero)

    def _taps(self, x, n0, n1, t):
        """(36, k, th, tw, C) taps of images n0:n1 of x (N, H, W, C)."""
        k, h, w, c, th, tw = n1 - n0, self.h, self.w, self.c, self.th, self.tw
        xpad = self.ws.get(numpy, f"wino4.xpad.{t}", (self.nb, 4 * th + 2, 4 * tw + 2, c), self.dtype, zero=True)
        xpad[:k, 1 : h + 1, 1 : w + 1] = x[n0:n1]
        u = self._buf("u", t, (36, k, th, tw, c))
        input_transform(xpad[:k], u, self.coef)
        return u

    def forward_into(self, x, n0, n1, wt, out, t):
        """out (k, H, W, O), C-contiguous <- conv of images n0:n1 of x (N, H, W, C) with the tap
        matrices ``wt`` (36, C, O) from ``weights``."""
        k, th, tw, o = n1 - n0, self.th, self.tw, self.o
        u = self._taps(x, n0, n1, t)
        m = self._buf("m", t, (36, k, th, tw, o))
        numpy.matmul(u.reshape(36, -1, self.c), wt, out=m.reshape(36, -1, o))
        output_transform(m, out, self.coef)

    def backward_into(self, x, dz, n0, n1, wt, dw_out, dx_out, t):
        """As ``Winograd3x3.backward_into``: dw_out (36, O, C) <- ``V^T U`` per tap; dx_out
        (k, H, W, C) <- the input gradient (skipped when None)."""
        k, th, tw, c, o = n1 - n0, self.th, self.tw, self.c, self.o
        u = self._taps(x, n0, n1, t).reshape(36, -1, c)
        v = self._buf("m", t, (36, k, th, tw, o))
        output_transform_adjoint(numpy.ascontiguousarray(dz), v, self.coef)
        v = v.reshape(36, -1, o)
        numpy.matmul(v.transpose(0, 2, 1), u, out=dw_out)
        if dx_out is None:
            return
        du = self._buf("u", t, (36, k, th, tw, c))  # the input's taps are used up
        numpy.matmul(v, wt.transpose(0, 2, 1), out=du.reshape(36, -1, c))
        dxpad = self._buf("dxpad", t, (k, 4 * th + 2, 4 * tw + 2, c))
        input_transform_adjoint(du, dxpad, self.coef)
        dx_out[...] = dxpad[:, 1 : self.h + 1, 1 : self.w + 1]

    def dw_finish(self, dwt):
        """(36, O, C) summed over chunks -> (O, C, 3, 3)."""
        return weight_transform_adjoint(dwt, self._kernel_map(numpy))
