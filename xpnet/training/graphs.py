"""The train step as one CUDA graph on CuPy (``xpnet train --cuda-graph``; opt-in).

Eagerly, each of a step's ~140 kernels is a launch the host issues, 5-10 us each from Python;
at small batches that, not the arithmetic, is the step. A CUDA graph records the step's kernels
once and replays them with one launch. What a graph needs, and how this step gives it:

* Every kernel compiled and every buffer made before the capture: the first batch of each shape
  runs one ordinary (warm-up) step, through a private memory pool that the graph keeps; the
  capture then makes exactly the warm-up's allocations, which that pool serves, and nothing
  else allocates from it.
* Nothing read on the host inside the step: the loss stays on the device (``forward_sums``),
  and the caller reads the losses when it logs them or checks them (``fit`` does every
  ``CHECK_EVERY`` steps and at the end of an epoch, so a NaN stops a run within that many
  steps, before the next checkpoint).
* Nothing that changes from step to step baked into the graph as a kernel argument: the
  learning rate and Adam's bias corrections live in a device array that ``load_scalars``
  updates before each replay, and so does each dropout layer's seed (``load_seed``, drawn from
  the same host generator as an eager step draws it); the batch is copied into the graph's own
  input buffers.
* The capture runs on a stream of its own (CUDA cannot capture the default stream); the graph
  is launched on the current stream, in order with the batch's copies before it and the reads
  of its outputs after it.
* One graph per batch shape (the last, partial batch of an epoch has its own); evaluation's
  forward is a graph of its own (``GraphedForward``).

On the fake device (``xpnet.testing.fakecupy``) the same code is checked without a GPU: a
capture records without running, a replay re-runs the recording, and a host read, a host copy
or an allocation the warm-up did not make inside the capture is an error.
"""

from __future__ import annotations

from xpnet import backend
from xpnet.nn import Dropout

CHECK_EVERY = 50  # steps between the host's reads of the losses in a graph-replayed run


class GraphError(RuntimeError):
    """A model or run that a captured step cannot serve."""


class _Shape:
    """One batch shape's graph, input buffers and output."""

    def __init__(self, xp, x, y=None):
        self.x = xp.empty_like(x)
        self.y = None if y is None else xp.empty_like(y)
        self.graph = self.sums = self.out = None


class GraphedStep:
    """``step(x, y, lr) -> sums``: zero_grad, forward, loss, backward and update of ``model``
    with ``opt`` and ``loss_fn`` (a CrossEntropyLoss), as a replayed CUDA graph per batch shape.

    ``sums`` is the (3,) device array the loss kernel fills (the summed loss, the hits and the
    out-of-range labels of the batch), overwritten by the next replay of the same shape: copy
    what must outlive it.
    """

    def __init__(self, model, opt, loss_fn):
        xp = backend.xp()
        if xp.__name__ == "numpy":
            raise GraphError("CUDA graphs need the cupy backend (--backend cupy)")
        self.dropouts = [m for m in model.modules() if isinstance(m, Dropout) and m.p > 0]
        self.xp, self.model, self.opt, self.loss_fn = xp, model, opt, loss_fn
        self.pool = xp.cuda.MemoryPool()
        self.stream = xp.cuda.Stream(non_blocking=True)
        self.shapes = {}
        opt.device_scalars()

    def _step(self, g):
        self.opt.zero_grad()
        logits = self.model(g.x)
        sums = self.loss_fn.forward_sums(logits, g.y)
        self.model.backward(self.loss_fn.backward())
        self.opt.step()
        return sums

    def __call__(self, x, y, lr):
        xp, opt = self.xp, self.opt
        opt.lr = float(lr)
        opt.load_scalars(opt.steps + 1)
        for m in self.dropouts:
            m.load_seed()
        key = (x.shape, y.shape, x.dtype.str, y.dtype.str)
        g = self.shapes.get(key)
        if g is None:
            with xp.cuda.using_allocator(self.pool.malloc):
                g = _Shape(xp, x, y)
                g.x[...] = x
                g.y[...] = y
                warm = self._step(g)  # a real step on this batch: compiles and allocates all
                with self.stream:
                    self.stream.begin_capture()
                    try:
                        steps = opt.steps
                        g.sums = self._step(g)
                        opt.steps = steps  # the capture ran nothing; its replays count
                    finally:
                        g.graph = self.stream.end_capture()
            self.shapes[key] = g
            return warm
        g.x[...] = x
        g.y[...] = y
        g.graph.launch()  # on the current stream, after the batch's copies and before what reads the outputs
        opt.steps += 1
        return g.sums


class GraphedForward:
    """``forward(x) -> logits``: ``model``'s forward (in the mode it is in, eval for
    evaluation) as a replayed CUDA graph per batch shape. The graph reads the weights and running
    statistics where they live, so updates made in place between replays are seen. The result
    is the graph's output buffer, overwritten by the next replay of that shape."""

    def __init__(self, model):
        xp = backend.xp()
        if xp.__name__ == "numpy":
            raise GraphError("CUDA graphs need the cupy backend (--backend cupy)")
        self.xp, self.model = xp, model
        self.pool = xp.cuda.MemoryPool()
        self.stream = xp.cuda.Stream(non_blocking=True)
        self.shapes = {}

    def __call__(self, x):
        xp = self.xp
        key = (x.shape, x.dtype.str)
        g = self.shapes.get(key)
        if g is None:
            with xp.cuda.using_allocator(self.pool.malloc):
                g = _Shape(xp, x)
                g.x[...] = x
                warm = self.model(g.x)
                with self.stream:
                    self.stream.begin_capture()
                    try:
                        g.out = self.model(g.x)
                    finally:
                        g.graph = self.stream.end_capture()
            self.shapes[key] = g
            return warm
        g.x[...] = x
        g.graph.launch()  # on the current stream, after the batch's copies and before what reads the outputs
        return g.out
