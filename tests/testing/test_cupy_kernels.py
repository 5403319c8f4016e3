"""Every kernel xpnet builds on a GPU, built by the real CuPy and compiled by NVRTC, without a GPU.

The kernels are not listed here: a train step (Adam and SGD) and an eval step of each network run
on the fake device (``xpnet.testing.fakecupy``), which records every function handed to
``cupy.fuse`` with the layout of its arguments, so a new kernel is covered without editing this
file. For each one the real CuPy then

1. traces it (``cupy.fuse``) on arrays of the same dtypes, shapes and strides, which point at
   memory no one reads, and the test asserts that CuPy took its ordinary fusion path: the
   ``Fusion`` object holds the traced kernel and no ``new_fusion`` (CuPy falls back to its
   experimental fusion silently on anything its tracer refuses);
2. generates the kernel's CUDA source with CuPy's own generator (the code an ``ElementwiseKernel``
   or ``ReductionKernel`` call would build for those arguments);
3. compiles it with NVRTC for compute_80 and compute_90 through CuPy's own compile path
   (``cupy._core.core.compile_with_cache``, its headers and options), and
4. asserts that the PTX has no float64 instruction.

Without a GPU every device query fails (the CUDA runtime finds no driver), so the test stops
CuPy at its first one and does the rest with the pieces CuPy exposes to Python:

* a fused reduction: ``ReductionKernel._call`` takes the device id as an argument, and keeps the
  generated source (``cached_codes``) before it asks the device for a compiled function;
* a fused elementwise kernel: ``ElementwiseKernel.__call__`` asks for the device before it
  generates anything, so the test does the call's argument bookkeeping here (broadcasting,
  CuPy's merge of contiguous axes, CuPy's type resolution ``_decide_params_type``) and hands the
  result to CuPy's generator ``_get_elementwise_kernel_code``;
* compilation: ``compile_with_cache`` adds CuPy's headers and options, then calls
  ``cupy.cuda.compiler._compile_module_with_cache``, which needs the device's architecture and
  loads the result on it; the test takes the source and options at that call and runs NVRTC
  itself (``cupy.cuda.compiler._NVRTCProgram``) with the options that call would add.

What this cannot do: a reduction with one input that CuPy would hand to CUB's block reduction
(``_can_use_cub_block_reduction``) is generated inside a function that asks for the device first;
the test fails on such a kernel and says so (xpnet has none). xpnet uses no ``ElementwiseKernel``,
``ReductionKernel`` or ``RawKernel`` of its own: every kernel goes through ``backend.fuse``.

Skipped where CuPy is not installed; CI installs it with NVRTC and the CUDA headers (the
``gpu-check`` extra).
"""

from __future__ import annotations

import math
import re

import numpy
import pytest

from xpnet import backend, nn, optim
from xpnet.models import Report2Net, ResNet9
from xpnet.testing import fakecupy

ARCHS = ("compute_80", "compute_90")
# PTX names every float64 operation, register and load with a .f64 type suffix.
FLOAT64 = re.compile(r"\.f64\b")


def _record_kernels():
    """{(fused function, argument specs)} from a train step (Adam, then SGD with Nesterov momentum
    and weight decay) and an eval step of ResNet-9 (at a width where the net has both im2col and
    Winograd convolutions) and of the second report's net, eager and as replayed CUDA graphs
    (``xpnet.training.graphs``, whose optimizer reads its scalars from the device), on the fake
    device."""
    from xpnet.training.graphs import GraphedForward, GraphedStep

    nets = (
        lambda rng: ResNet9(width=0.25, rng=rng),
        lambda rng: Report2Net(channels=(8, 16, 32, 64), rng=rng),
    )
    kernels = {}
    with fakecupy.installed() as dev:
        backend.use("cupy")
        try:
            for make in nets:
                rng = numpy.random.default_rng(0)
                model = make(rng)
                x = backend.to_device(rng.standard_normal((8, 1, 28, 28)).astype(numpy.float32))
                y = backend.to_device(rng.integers(0, 10, 8))
                loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
                sgd = dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
                for make_opt in (
                    lambda: optim.Adam(model.named_parameters(), lr=1e-3),
                    lambda: optim.SGD(model.named_parameters(), **sgd),
                ):
                    opt = make_opt()
                    model.train()
                    opt.zero_grad()
                    logits = model(x)
                    loss_fn(logits, y)
                    model.backward(loss_fn.backward())
                    opt.step()
                    loss_fn.hits(logits, y)
                    step = GraphedStep(model, make_opt(), loss_fn)
                    for lr in (0.01, 0.005):  # a warm-up and capture, then a replay
                        step(x, y, lr)
                model.eval()
                model(x).argmax(axis=1)
                forward = GraphedForward(model)
                forward(x)
                forward(x)
            kernels.update(dev.kernels)
        finally:
            backend.use("numpy")
    return list(kernels)


@pytest.fixture(scope="module")
def cupy():
    cp = pytest.importorskip("cupy", reason="CuPy is not installed (pip install -e '.[gpu-check]')")
    if isinstance(cp, fakecupy.FakeCuPy):
        pytest.skip("only the fake device is importable as cupy here")
    pytest.importorskip("cupy._core._kernel", reason="not the real CuPy")
    try:
        cp.cuda.runtime.getDeviceCount()
    except Exception:
        pass
    else:  # pragma: no cover - a machine with a GPU
        pytest.skip("a GPU is present: the CuPy tests run the kernels themselves")
    return cp


@pytest.fixture(scope="module")
def recorded():
    return _record_kernels()


@pytest.fixture
def device_free(cupy, monkeypatch):
    """Real CuPy as the backend, its arrays in memory that no one reads."""
    memory = cupy.cuda.UnownedMemory(1 << 20, 1 << 40, None, device_id=0)
    offset = [0]

    def allocate(size):
        ptr = cupy.cuda.MemoryPointer(memory, offset[0])
        offset[0] += size + 512
        return ptr

    cupy.cuda.set_allocator(allocate)
    monkeypatch.setattr(backend, "_current", cupy)  # what use("cupy") selects on a GPU machine
    backend._fused.clear()
    yield cupy
    backend._fused.clear()
    cupy.cuda.set_allocator(cupy.get_default_memory_pool().malloc)


def _argument(cp, spec):
    """A real CuPy argument of the recorded layout (arrays in unread memory)."""
    if spec[0] == "scalar":
        kind, value = spec[1], spec[2]
        return {"float": float, "int": int, "bool": bool, "complex": complex}.get(kind, numpy.dtype(kind).type)(value)
    _, shape, dtype, strides = spec
    dtype = numpy.dtype(dtype)
    extent = dtype.itemsize + sum((n - 1) * abs(s) for n, s in zip(shape, strides))
    memptr = cp.cuda.alloc(max(extent, 1))
    return cp.ndarray(shape, dtype, memptr=memptr, strides=strides)


def _trace(cp, fn, args):
    """(kernel, kwargs) of ``cupy.fuse(fn)`` traced on args, asserting CuPy's ordinary path."""
    from cupy_backends.cuda.api.runtime import CUDARuntimeError

    fused = cp.fuse(fn)
    try:
        fused(*args)
    except CUDARuntimeError:
        pass  # tracing is done: CuPy asked the driver for the device to launch on
    assert fused.new_fusion is None, f"{fn.__qualname__}: CuPy fell back to its experimental new_fusion"
    (kernel, kwargs), = fused._memo.values()
    return kernel, kwargs


def _reduced_ndim(views, shape):
    """The number of dimensions ElementwiseKernel's launch keeps after merging the axes that are
    contiguous in every array (CuPy's ``_reduce_dims``, cupy/_core/_kernel.pyx)."""
    if len(shape) <= 1 or not views:
        return len(shape)
    strided = [v for v in views if not v.flags.c_contiguous]
    if not strided:
        return 1
    if len(shape) == 2:
        return 2
    kept, last = 0, -1
    merged = list(shape)
    for ax in range(len(shape)):
        if merged[ax] == 1:
            continue
        if last >= 0:
            if any(v.strides[ax] * merged[ax] != v.strides[last] for v in strided):
                kept += 1
            else:
                merged[ax] *= merged[last]
        last = ax
    return kept + (last >= 0)


def _elementwise_source(cp, kernel, args):
    """The CUDA source ``kernel(*args)`` would compile (see the module docstring)."""
    from cupy._core import _carray, _kernel, _scalar

    arrays = [a for a in args if isinstance(a, cp.ndarray)]
    shape = numpy.broadcast_shapes(*(a.shape for a in arrays))
    in_types, out_types, type_map = kernel._decide_params_type(
        tuple(a.dtype if isinstance(a, cp.ndarray) else None for a in args), ()
    )
    views = [cp.broadcast_to(a, shape) for a in arrays]
    outs = [cp.ndarray(shape, t) for t in out_types]
    ndim = _reduced_ndim(views + outs, shape)
    small = math.prod(shape) * 16 <= 1 << 31
    ndarray_kind, indexer_kind, scalar_kind = 1, 2, 3  # CuPy's _ArgKind
    infos = []
    for a, t in zip(args, in_types):
        if isinstance(a, cp.ndarray):
            view = views[next(i for i, x in enumerate(arrays) if x is a)]
            infos.append(_kernel._ArgInfo(ndarray_kind, cp.ndarray, a.dtype, ndim, view.flags.c_contiguous, small))
        else:
            infos.append(_kernel._ArgInfo(scalar_kind, _scalar.CScalar, numpy.dtype(t), 0, True, True))
    for t in out_types:
        infos.append(_kernel._ArgInfo(ndarray_kind, cp.ndarray, numpy.dtype(t), ndim, True, small))
    infos.append(_kernel._ArgInfo(indexer_kind, _carray.Indexer, None, ndim, True, small))
    code = _kernel._get_elementwise_kernel_code(
        tuple(infos), type_map, kernel.params, kernel.operation, kernel.name, kernel.preamble, **kernel.kwargs
    )
    return code, kernel.kwargs.get("options", ())


def _reduction_source(cp, kernel, kwargs, args):
    """The CUDA source ``kernel(*args, **kwargs)`` would compile (see the module docstring)."""
    from cupy._core import _scalar
    from cupy._core._cub_reduction import _can_use_cub_block_reduction
    from cupy_backends.cuda.api.runtime import CUDARuntimeError

    arrays = [a for a in args if isinstance(a, cp.ndarray)]
    shape = numpy.broadcast_shapes(*(a.shape for a in arrays))
    ins = [cp.broadcast_to(a, shape) if isinstance(a, cp.ndarray) else _scalar.CScalar(a) for a in args]
    axis = kwargs.get("axis")
    reduce_axis = tuple(range(len(shape))) if axis is None else tuple(numpy.atleast_1d(axis) % len(shape))
    out_axis = tuple(i for i in range(len(shape)) if i not in reduce_axis)
    if len(ins) == 1 and isinstance(ins[0], cp.ndarray):
        out = cp.ndarray(tuple(shape[i] for i in out_axis), numpy.float32)
        assert _can_use_cub_block_reduction(ins, [out], reduce_axis, out_axis) is None, (
            f"{kernel.name}: CuPy would build this reduction with CUB, whose source this test cannot generate "
            "without a device"
        )
    kernel._cached_codes.clear()
    try:
        kernel._call(ins, [], shape, axis, None, False, kernel.reduce_dims, 0, None, True, True)
    except CUDARuntimeError:
        pass  # CuPy asked for the device's compiled function, after keeping the source
    (code,) = kernel._cached_codes.values()
    return code, kernel.options


def _ptx(cp, source, options, arch):
    """CuPy's compile of ``source`` for ``arch``, through its own headers and options -> PTX."""
    from cupy._core import core
    from cupy.cuda import compiler

    taken = {}

    class Taken(Exception):
        pass

    def take(source, options=(), **kwargs):
        taken.update(source=source, options=options)
        raise Taken

    original = compiler._compile_module_with_cache
    compiler._compile_module_with_cache = take
    try:
        core.compile_with_cache(source, tuple(options))
    except Taken:
        pass
    finally:
        compiler._compile_module_with_cache = original
    # What _compile_with_cache_cuda and compile_using_nvrtc add for a PTX build.
    opts = taken["options"] + ("-ftz=true", f"-arch={arch}", "--device-as-default-execution-space")
    ptx, _ = compiler._NVRTCProgram(taken["source"], "kern.cu", method="ptx").compile(opts)
    return ptx.decode() if isinstance(ptx, bytes) else ptx


def test_the_steps_hand_fuse_their_kernels(recorded):
    # The convolution blocks, the loss and the optimizers each hand fuse their kernels.
    modules = {fn.__module__ for fn, _ in recorded}
    assert {"xpnet.optim", "xpnet.functional.loss"} <= modules, modules
    assert any(m.startswith("xpnet.functional.fused") for m in modules), modules
    assert len(recorded) >= 20


def test_every_kernel_takes_cupys_ordinary_fusion_and_compiles_to_float32_ptx(device_free, recorded):
    from cupy._core import _kernel, _reduction

    cp = device_free
    failures = []
    compiled = {}
    for fn, specs in recorded:
        args = [_argument(cp, s) for s in specs]
        try:
            kernel, kwargs = _trace(cp, fn, args)
            if isinstance(kernel, _reduction.ReductionKernel):
                source, options = _reduction_source(cp, kernel, kwargs, args)
            else:
                assert isinstance(kernel, _kernel.ElementwiseKernel), type(kernel)
                source, options = _elementwise_source(cp, kernel, args)
            for arch in ARCHS:
                key = (source, tuple(options), arch)
                if key not in compiled:
                    compiled[key] = _ptx(cp, source, options, arch)
                lines = [line for line in compiled[key].splitlines() if FLOAT64.search(line)]
                assert not lines, f"{arch}: float64 in the PTX: {lines[:3]}"
        except Exception as e:  # every kernel is tried; all failures are reported together
            failures.append(f"{fn.__qualname__} {specs}: {type(e).__name__}: {e}"[:2000])
    assert not failures, "\n".join(failures)
    assert compiled


@pytest.mark.parametrize("case", __import__("_fuse_cases").REFUSED, ids=lambda c: c[0].__name__)
def test_what_the_fake_device_refuses_sends_real_cupy_to_new_fusion(device_free, case):
    from cupy_backends.cuda.api.runtime import CUDARuntimeError

    fn, make_args = case
    fused = device_free.fuse(fn)
    try:
        fused(*make_args(device_free))
    except (CUDARuntimeError, TypeError, NotImplementedError, AttributeError):
        pass
    assert fused.new_fusion is not None


def test_a_float64_kernel_is_caught(device_free):
    def widen(x):
        return x * numpy.float64(0.1)

    cp = device_free
    kernel, _ = _trace(cp, widen, [cp.ndarray((4,), numpy.float32)])
    source, options = _elementwise_source(cp, kernel, [cp.ndarray((4,), numpy.float32)])
    assert FLOAT64.search(_ptx(cp, source, options, ARCHS[0]))
