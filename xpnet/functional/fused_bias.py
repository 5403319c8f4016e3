"""Conv3x3(stride 1, padding 1) + bias [+ a residual] + ReLU as one operation, for networks
without BatchNorm (the second report's, ``xpnet.models.report2``).

The same math as ``conv2d`` with its bias, an optional ``+ residual`` and ``relu`` run one after
the other, on the CPU body of ``fused``: the convolution is the plan ``fused.conv3x3_method``
chooses for the shape (Winograd F(4x4, 3x3) or F(2x2, 3x3), or im2col + GEMM), run a few images
at a time so each chunk's output is still in cache when the bias, the residual and the ReLU are
applied to it, the chunks spread over threads.

* Forward: per chunk, z = conv(x) into the output, then y = relu(z + b [+ r]) in place.
* Backward: per chunk, g = dy where y > 0 (the ReLU's mask, read from the output), its column
  sums (the bias gradient), then the plan's weight and input gradients of that chunk (always
  the plan of ``conv3x3_method``: the "exact" forward's reason does not reach the gradients). ``g`` is also
  the gradient of the residual input, returned for the caller to add to its skip path.

Only the CPU has this body; device arrays run the plain layers (im2col convolution, then bias,
add and ReLU as CuPy's elementwise kernels), the same math.
"""

from __future__ import annotations

import numpy

from xpnet.backend import get_array_module
from xpnet.functional import conv as conv_ops
from xpnet.functional import fused
from xpnet.functional.activation import relu_forward
from xpnet.functional.conv import Im2col3x3
from xpnet.functional.fused import _check, _ColumnSums
from xpnet.functional.layout import nchw, nhwc
from xpnet.functional.parallel import chunk_size, for_chunks, workers
from xpnet.functional.workspace import Workspace

# The forward's plans: "auto" as ``fused`` chooses, or "exact", im2col + GEMM only. A Winograd
# layer's outputs carry its transforms' rounding, which differs from pixel to pixel of a tile, so a flat region (MNIST's
# background) comes out as values a few ulps apart instead of equal ones; a max-pool that sends a
# tied window's gradient to every maximum (``ties="share"``) then sees fewer ties. F(4x4, 3x3)
# broke a quarter of the second report's net's positive ties at its first pool (32 test images).
METHODS = ("auto", "exact")


def _plan(n, h, w, c, o, dtype, ws, method):
    plan = fused.conv3x3_method(h, w, c, o) if method == "auto" else Im2col3x3
    nb = chunk_size(numpy, n, plan.image_bytes(h, w, c, o, numpy.dtype(dtype).itemsize), fused.COL_CHUNK_BYTES)
    if plan is Im2col3x3:
        return plan(h, w, c, o, nb, ws, dtype, n=n)
    return plan(h, w, c, o, nb, ws, dtype)


def conv_bias_relu_forward(x, w, b, residual=None, ws=None, method="auto"):
    """y = relu(conv3x3(x, w) + b [+ residual]).

    x: (N, C, H, W); w: (O, C, 3, 3); b: (O,); residual: (N, O, H, W) or None.
    ``method``: the forward's plan, "auto" (the one ``fused.conv3x3_method`` chooses for the
    shape) or "exact" (im2col + GEMM, whose equal inputs give equal outputs; see ``METHODS``).
    The backward always takes the "auto" plan.
    Returns (y: (N, O, H, W), cache). ``cache`` refers to ``x``, ``w`` and ``y`` themselves:
    change none of them in place before the backward pass.
    """
    xp = get_array_module(x, w, b, residual)
    _check(x, w)
    if xp is not numpy:
        return _forward_layers(x, w, b, residual)
    ws = Workspace() if ws is None else ws
    xh = nhwc(x)
    n, h, wd, c = xh.shape
    o, dt = w.shape[0], w.dtype
    plan = _plan(n, h, wd, c, o, dt, ws, method)
    wk = plan.weights(w)
    rh = None if residual is None else nhwc(residual)
    y = numpy.empty((n, h, wd, o), dtype=dt)

    def body(t, n0, n1):
        out = y[n0:n1]
        plan.forward_into(xh, n0, n1, wk, out, t)
        numpy.add(out, b, out=out)
        if rh is not None:
            numpy.add(out, rh[n0:n1], out=out)
        numpy.maximum(out, 0.0, out=out)

    for_chunks(numpy, n, plan.nb, body)
    return nchw(y), ("cpu", x, w, y)


def _forward_layers(x, w, b, residual):
    """The device's body: the plain layers' functions, one after the other."""
    z, conv_cache = conv_ops.conv2d_forward(x, w, b, 1, 1)
    if residual is not None:
        z += residual
    y, _ = relu_forward(z)
    return y, ("layers", conv_cache, y)


def conv_bias_relu_backward(dy, cache, need_dx=True, ws=None):
    """dy: (N, O, H, W), the gradient of the forward's output.

    Returns (dx: (N, C, H, W) or None, dw: (O, C, 3, 3), db: (O,), g: (N, O, H, W)), where g, the
    gradient at the ReLU's input, is also the residual input's gradient.
    """
    if cache[0] == "layers":
        _, conv_cache, y = cache
        xp = get_array_module(dy)
        g = xp.multiply(dy, y > 0)
        dx, dw, db = conv_ops.conv2d_backward(g, conv_cache)
        return (dx if need_dx else None), dw, db, g
    _, x, w, y = cache
    ws = Workspace() if ws is None else ws
    xh, dyh = nhwc(x), nhwc(dy)
    n, h, wd, o = y.shape
    c, dt = xh.shape[3], y.dtype
    # Ties live in the forward's values alone: the gradients take the fastest plan either way.
    plan = _plan(n, h, wd, c, o, dt, ws, "auto")
    nt = workers(numpy)
    g = numpy.empty_like(y)
    db = _ColumnSums(nt, numpy.ones(plan.nb * h * wd, dtype=dt))
    dws = [None] * nt  # per-thread weight gradients, each thread's chunks summed into its own
    part = [None] * nt
    dx = numpy.empty((n, h, wd, c), dtype=dt) if need_dx else None
    wk = plan.weights(w) if need_dx else None

    def body(t, n0, n1):
        gc = g[n0:n1]
        numpy.multiply(dyh[n0:n1], y[n0:n1] > 0, out=gc)
        db.add(t, gc.reshape(-1, o))
        if dws[t] is None:
            dws[t] = numpy.empty(plan.dw_shape, dtype=dt)
            target = dws[t]
        else:
            target = part[t] = numpy.empty(plan.dw_shape, dtype=dt) if part[t] is None else part[t]
        plan.backward_into(xh, gc, n0, n1, wk, target, None if dx is None else dx[n0:n1], t)
        if target is not dws[t]:
            dws[t] += target

    for_chunks(numpy, n, plan.nb, body)
    used = [d for d in dws if d is not None]
    dwmat = used[0]
    for d in used[1:]:
        dwmat += d
    return None if dx is None else nchw(dx), plan.dw_finish(dwmat), db.total().astype(dt, copy=False), nchw(g)
