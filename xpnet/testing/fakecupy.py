"""A strict stand-in for CuPy that runs on the CPU and counts what a GPU would pay for.

No GPU is lent to this project's machines, so the CuPy path is checked against this device
instead. It holds NumPy arrays inside a type of its own and behaves as CuPy does where a GPU run
would break or slow down:

* its ``ndarray`` is a distinct type; ``numpy.asarray`` on one raises TypeError, and so does any
  operation that mixes one with a NumPy array (both ways round), as CuPy does;
* data moves only explicitly: ``asarray`` from host (counted as a host-to-device copy), and
  ``asnumpy`` / ``.get()`` / ``.item()`` / ``.tolist()`` / ``float()`` / ``int()`` / ``bool()``
  back (each counted as a host synchronisation and a device-to-host copy); a boolean-mask index
  counts a synchronisation too, since CuPy counts the mask's true entries on the host;
* it offers only the names and keyword arguments that CuPy offers (``cupy_api``, generated from
  the real package); anything else is an AttributeError or a TypeError;
* every operation that would launch a kernel on a GPU counts one launch, under its name: ufuncs,
  reductions, copies, fills, GEMMs, advanced indexing, assignments. Views (slices, reshapes
  that need no copy, transposes) and ``empty`` count none. A function run by ``fuse`` counts one
  launch in all and runs unfused here, with only what ``cupy.fuse`` can fuse allowed inside;
* an array created in float64 is counted (the device path should not make any);
* a ufunc's result is allocated in C order, as CuPy allocates it, so a layout lost on a GPU is
  lost here too (and the copies it causes are counted).

Select it through the real seam: ``with fakecupy.installed() as dev: backend.use("cupy")``
puts it in ``sys.modules["cupy"]`` for the duration; ``dev.counts`` holds the counters.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import types
import weakref

import numpy

from xpnet.testing import cupy_api

# What CuPy's ordinary fusion (cupy/_core/fusion.pyx) traces inside a fused function besides
# ufuncs and operators: ``where``, ``clip``, ``copy`` and the reductions, which take ``axis`` and
# ``out`` but not ``keepdims``. Anything else raises inside its tracer, and CuPy then runs the
# function through ``new_fusion`` without a word.
_FUSABLE_FUNCTIONS = {"where", "clip", "copy", "sum", "prod", "amax", "amin", "max", "min", "all", "any"}
_REDUCTIONS = {"sum", "prod", "amax", "amin", "max", "min", "all", "any"}
# Calls that allocate without launching a kernel.
_NO_LAUNCH = {"empty", "empty_like", "ndim", "shape", "size", "result_type", "can_cast", "get_array_module"}
# Names every CuPy module has that are not functions (dtypes, constants, classes).
_CONSTANTS = {
    name: getattr(numpy, name)
    for name in ("inf", "nan", "pi", "e", "newaxis", "float16", "float32", "float64", "int8", "int16",
                 "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool_", "complex64",
                 "complex128", "dtype", "intp", "integer", "floating", "number", "generic")
}


class Counts:
    """What a stretch of code would cost on a GPU: ``ops`` (kernel launches), ``syncs`` (host
    waits on the device), ``to_host`` and ``to_device`` (copies), ``float64`` (arrays made in
    float64), and ``by_name`` (launches per operation name)."""

    FIELDS = ("ops", "syncs", "to_host", "to_device", "float64")

    def __init__(self):
        self.reset()

    def reset(self):
        self.ops = self.syncs = self.to_host = self.to_device = self.float64 = 0
        self.graph_ops = 0  # launches replayed inside CUDA graphs (one host launch each graph)
        self.by_name = collections.Counter()
        self.float64_names = collections.Counter()

    def snapshot(self) -> dict:
        return {k: getattr(self, k) for k in self.FIELDS}

    def since(self, snapshot: dict) -> dict:
        return {k: getattr(self, k) - snapshot[k] for k in self.FIELDS}


counts = Counts()
_fusing = 0
_limit = [0]  # the memory pool's limit in bytes (0: none), set through the pool object


class OutOfMemoryError(MemoryError):
    """As ``cupy.cuda.memory.OutOfMemoryError``: an allocation the device could not serve."""

    def __init__(self, size, total, limit=0):
        self.size, self.total, self.limit = size, total, limit
        super().__init__(
            f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes, "
            f"limit set to: {limit:,} bytes)."
        )


def _launch(name, n=1):
    if not _fusing and n:
        counts.ops += n
        counts.by_name[name] += n


def _sync(name):
    if _fusing:
        raise TypeError(f"cupy.fuse: {name} needs a value on the host, which a fused kernel cannot give")
    if _capture[0] is not None:
        raise GraphCaptureError(f"{name}: a host read during CUDA-graph capture (nothing has run yet)")
    counts.syncs += 1
    counts.to_host += 1
    counts.by_name[name] += 1


# -- CUDA graphs ------------------------------------------------------------------------------
#
# Between ``stream.begin_capture()`` and ``stream.end_capture()`` nothing runs on a GPU: each
# launch is recorded, with the buffers it reads and writes, into a graph that ``launch()``
# replays. The fake device does the same. A launching operation under capture is worked out (to
# learn its result's shape) and then undone, so the caller sees no effect; its new result holds
# garbage (NaN, or all ones) until a replay; the recording keeps the operation with its buffers.
# A host read, a host-to-device copy, or an allocation that the warm-up step before the capture
# did not make (through the same private ``MemoryPool``) is a GraphCaptureError, as such a
# graph would be wrong or fail on a GPU.


class GraphCaptureError(RuntimeError):
    """Something a captured CUDA graph cannot hold."""


_capture = [None]  # the _Graph being recorded, if any


def _payloads(values, found):
    for v in values:
        if isinstance(v, ndarray):
            found.append(v._a)
        elif isinstance(v, (list, tuple)):
            _payloads(v, found)
        elif isinstance(v, dict):
            _payloads(v.values(), found)
    return found


def _garbage(a):
    a[...] = numpy.nan if a.dtype.kind in "fc" else 1


def _results(r):
    """The result payloads of an operation's return value, in order."""
    out = []
    for v in r if isinstance(r, tuple) else (r,):
        if isinstance(v, ndarray):
            out.append(v._a)
        elif isinstance(v, numpy.ndarray):
            out.append(v)
    return out


def _exec(thunk, *operands):
    """Run one launching operation ``thunk()`` on ``operands`` (every device array it reads or
    writes): now, or under capture recorded for replay, its effects undone."""
    graph = _capture[0]
    if graph is None or _fusing:
        r = thunk()
        _allocated(_results(r), operands)
        return r
    touched = _payloads(operands, [])
    saved = [a.copy() for a in touched]
    with numpy.errstate(all="ignore"):  # the inputs may be garbage a replay will fill
        r = thunk()
    for a, before in zip(touched, saved):
        a[...] = before
    results = _results(r)
    fresh = [i for i, v in enumerate(results) if not any(v is a for a in touched)]
    for i in fresh:
        _garbage(results[i])
        graph.pool.serve(results[i].nbytes)
    graph.ops.append((thunk, [(i, results[i]) for i in fresh]))
    return r


def _alloc(r):
    """An allocation that launches nothing (``empty``): under capture, one the warm-up made."""
    if isinstance(r, numpy.ndarray) and not _fusing:
        if _capture[0] is not None:
            _capture[0].pool.serve(r.nbytes)
        else:
            _allocated([r])
    return r


def _allocated(results, operands=()):
    """New device buffers made outside capture: a private pool in use remembers their sizes."""
    pool = _allocator[0]
    if pool is None:
        return
    touched = _payloads(operands, [])
    for v in results:
        if v.base is None and not any(v is a for a in touched):
            pool.note(v.nbytes)


class _Graph:
    """``cupy.cuda.Graph``: what a capture recorded; ``launch`` replays it (one launch)."""

    def __init__(self, pool):
        self.pool, self.ops = pool, []

    def launch(self, stream=None):
        if _capture[0] is not None:
            raise GraphCaptureError("Graph.launch during a capture")
        counts.ops += 1
        counts.by_name["graph.launch"] += 1
        counts.graph_ops += len(self.ops)
        for thunk, fresh in self.ops:
            results = _results(thunk())
            for i, target in fresh:
                target[...] = results[i]

    def upload(self, stream=None):
        pass


class MemoryPool:
    """``cupy.cuda.MemoryPool`` as a graph's private pool: with ``using_allocator(pool.malloc)``
    it remembers the sizes of the buffers made outside capture (the warm-up step), and serves a
    capture only those: an allocation it never made would be a fresh cudaMalloc inside the
    graph, or a block the graph shares with whoever allocates next."""

    def __init__(self, allocator=None):
        self.blocks = collections.Counter()

    def malloc(self, size):
        raise NotImplementedError("the fake device allocates through its arrays")

    def note(self, nbytes):
        self.blocks[nbytes] += 1

    def serve(self, nbytes):
        if self.blocks[nbytes] <= 0:
            raise GraphCaptureError(
                f"an allocation of {nbytes:,} bytes during CUDA-graph capture that the warm-up step did not make"
            )
        self.blocks[nbytes] -= 1

    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_all_blocks(self, stream=None):
        pass


_allocator = [None]  # the private MemoryPool in use (using_allocator), if any


@contextlib.contextmanager
def using_allocator(allocator=None):
    """``cupy.cuda.using_allocator(pool.malloc)``: allocations go through ``pool`` meanwhile."""
    previous = _allocator[0]
    _allocator[0] = getattr(allocator, "__self__", None) if allocator is not None else None
    try:
        yield
    finally:
        _allocator[0] = previous


class _CaptureStream:
    """``cupy.cuda.Stream``: work queued in it (``with stream:``) can be captured into a graph."""

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        self._graph = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        _sync("stream.synchronize")

    def begin_capture(self, mode=None):
        if _capture[0] is not None:
            raise GraphCaptureError("begin_capture: a capture is already under way")
        pool = _allocator[0]
        self._graph = _capture[0] = _Graph(pool if pool is not None else MemoryPool())
        return None

    def end_capture(self):
        graph, self._graph = self._graph, None
        if graph is None or _capture[0] is not graph:
            raise GraphCaptureError("end_capture without begin_capture on this stream")
        _capture[0] = None
        return graph

    def is_capturing(self):
        return self._graph is not None


class _Trace:
    """What the ordinary fusion's tracer knows inside one fused function: whether its one
    reduction has run, and which arrays were made after it (its "post-map" values)."""

    def __init__(self):
        self.reduced = False
        self.post = {}  # id -> array, kept alive so that ids stay unique

    def mark(self, r):
        for v in r if isinstance(r, tuple) else (r,):
            if isinstance(v, ndarray):
                self.post[id(v)] = v
        return r


_trace = [None]


def _refuse(what):
    raise TypeError(f"cupy.fuse cannot fuse {what} (CuPy would fall back to its experimental new_fusion)")


def _fused_operands(name, operands):
    """Check the array operands of an operation traced inside ``fuse``; True when its result is
    a post-reduction value."""
    trace = _trace[0]
    if trace is None or not trace.reduced:
        return False
    for v in operands:
        if isinstance(v, ndarray) and id(v) not in trace.post:
            _refuse(f"{name} on a value from before the kernel's reduction (CuPy: 'Shape mismatch')")
    return True


def _dev(x, where):
    """A device argument's NumPy payload; NumPy arrays are refused, as CuPy refuses them."""
    t = type(x)
    if t is ndarray:
        return x._a
    if isinstance(x, numpy.ndarray):
        raise TypeError(
            f"{where}: got a numpy.ndarray where CuPy needs a cupy.ndarray or a scalar; move host "
            f"data to the device explicitly (cupy.asarray)"
        )
    if t is list or t is tuple:
        return t(_dev(v, where) for v in x)
    if isinstance(x, slice):
        return slice(_dev(x.start, where), _dev(x.stop, where), _dev(x.step, where))
    return x


def _wrap(r, name):
    if isinstance(r, numpy.ndarray):
        if r.dtype == numpy.float64 and not _fusing:
            counts.float64 += 1
            counts.float64_names[name] += 1
        if _limit[0] and r.base is None and r.nbytes > _limit[0]:
            raise OutOfMemoryError(r.nbytes, 0, _limit[0])
        out = object.__new__(ndarray)
        out._a = r
        return out
    if isinstance(r, numpy.generic):  # CuPy returns 0-d arrays where NumPy returns scalars
        return _wrap(numpy.asarray(r), name)
    if isinstance(r, tuple):
        return tuple(_wrap(v, name) for v in r)
    return r


def _check_keywords(qualname, allowed, kwargs):
    for k in kwargs:
        if k not in allowed:
            raise TypeError(f"{qualname}() got an unexpected keyword argument {k!r} "
                            f"(CuPy {cupy_api.VERSION} has no such keyword)")


def _ufunc(name):
    npf = getattr(numpy, name)
    allowed = cupy_api.UFUNCS[name]

    def call(*args, **kwargs):
        _check_keywords(f"cupy.{name}", allowed, kwargs)
        post = False
        if _fusing:
            if set(kwargs) - {"out"}:
                _refuse(f"cupy.{name} with keywords other than out= ({', '.join(sorted(kwargs))})")
            post = _fused_operands(f"cupy.{name}", (*args, kwargs.get("out")))
        where = f"cupy.{name}"
        a = _dev(args, where)
        out = kwargs.get("out")
        kw = {k: _dev(v, where) for k, v in kwargs.items()}
        _launch(name)
        if out is None and len(a) <= npf.nin:
            # CuPy allocates a ufunc's result in C order, whatever the inputs' layout (NumPy
            # keeps theirs): a channels-last input gives a result that is not.
            kw["order"] = "C"
        r = _exec(lambda: npf(*a, **kw), args, kwargs)
        if out is not None:
            return out
        r = _wrap(r, name)
        return _trace[0].mark(r) if post else r

    call.__name__ = name
    call.nin, call.nout = npf.nin, npf.nout
    return call


def _function(name, impl=None):
    """cupy.<name>: NumPy's function on device payloads, with CuPy's keywords only."""
    npf = impl or getattr(numpy, name)
    allowed = cupy_api.FUNCTIONS[name] or ()
    launches = 0 if name in _NO_LAUNCH else 1

    def call(*args, **kwargs):
        _check_keywords(f"cupy.{name}", allowed, kwargs)
        post = _fusing and _fused_call(name, args, kwargs)
        where = f"cupy.{name}"
        a = _dev(args, where)
        out = kwargs.get("out")
        kw = {k: _dev(v, where) for k, v in kwargs.items()}
        _launch(name, launches)
        r = _exec(lambda: npf(*a, **kw), args, kwargs) if launches else _alloc(npf(*a, **kw))
        if out is not None:
            return out
        r = _wrap(r, name)
        return _trace[0].mark(r) if post else r

    call.__name__ = name
    return call


def _fused_call(name, args, kwargs):
    """Refuse what the ordinary fusion cannot trace in ``cupy.<name>(*args, **kwargs)``; True
    when the result is a post-reduction value."""
    if name not in _FUSABLE_FUNCTIONS:
        _refuse(f"cupy.{name}")
    if name == "where" and len(args) + len(kwargs) != 3:
        _refuse("cupy.where without both x and y")
    if name not in _REDUCTIONS:
        return _fused_operands(f"cupy.{name}", (*args, *kwargs.values()))
    if kwargs.get("keepdims"):
        _refuse(f"cupy.{name}(keepdims=True)")
    trace = _trace[0]
    if trace.reduced:
        _refuse(f"a second reduction (cupy.{name}) in one kernel")
    trace.reduced = True
    return True


# -- functions whose CuPy behaviour differs from applying NumPy's to the payloads ---------------


def asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    """Host data is copied to the device (counted); a device array is returned as it is, or
    converted on the device."""
    if _fusing:
        raise TypeError("cupy.fuse cannot fuse cupy.asarray")
    if isinstance(a, ndarray):
        r = a._a if dtype is None else a._a.astype(dtype, copy=False)
        if r is a._a and not copy:
            return a
        _launch("asarray")
        return _wrap(_exec(lambda: numpy.array(r, order=order or "K"), a), "asarray")
    if _capture[0] is not None:
        raise GraphCaptureError("cupy.asarray(host data): a host-to-device copy during CUDA-graph capture")
    counts.to_device += 1
    counts.by_name["asarray(host)"] += 1
    return _wrap(numpy.array(a, dtype=dtype, order=order or "K"), "asarray")


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    if isinstance(obj, ndarray):
        _launch("array")
        return _wrap(_exec(lambda: numpy.array(obj._a, dtype=dtype, order=order, ndmin=ndmin), obj), "array")
    if _capture[0] is not None:
        raise GraphCaptureError("cupy.array(host data): a host-to-device copy during CUDA-graph capture")
    counts.to_device += 1
    counts.by_name["array(host)"] += 1
    return _wrap(numpy.array(obj, dtype=dtype, order=order, ndmin=ndmin), "array")


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    if isinstance(a, ndarray):
        return a.get()
    return numpy.asarray(a, order=order)


def get_array_module(*args):
    return sys.modules["cupy"] if any(isinstance(a, ndarray) for a in args) else numpy


def fuse(*args, **kwargs):
    """As ``cupy.fuse``: the decorated function is one launch; here it runs unfused, with only
    fusable operations allowed inside and nothing moved to the host."""

    def decorate(fn):
        name = kwargs.get("kernel_name") or fn.__name__

        def fused(*a):
            for v in a:
                if isinstance(v, numpy.ndarray):
                    raise TypeError(f"cupy.fuse({fn.__name__}): got a numpy.ndarray argument")
                if not isinstance(v, (ndarray, *_FUSE_ARGUMENTS)):
                    raise TypeError(f"Invalid argument type for {fn.__name__!r}: {type(v)!r}")
            if _fusing:  # a fused function called by one being traced is traced inline
                return fn(*a)
            if not name.isidentifier() or not name.isascii():
                _refuse(f"a function named {name!r}: a kernel's name must be a C identifier")
            _launch(f"fuse:{fn.__name__}")
            _record(fn, a)
            return _exec(lambda: _traced(fn, a), a)

        fused.__name__ = fn.__name__
        fused.__wrapped__ = fn
        return fused

    if len(args) == 1 and callable(args[0]) and not kwargs:
        return decorate(args[0])
    return decorate


_FUSE_ARGUMENTS = (int, float, complex, bool, numpy.generic, type(None))  # besides ndarray


def spec(v):
    """What a kernel's code depends on in an argument: ("array", shape, dtype, strides) or
    ("scalar", dtype or Python type, value)."""
    if isinstance(v, ndarray):
        return ("array", v.shape, v.dtype.str, v.strides)
    if isinstance(v, numpy.generic):
        return ("scalar", v.dtype.str, v.item())
    return ("scalar", type(v).__name__, v)


def _record(fn, args):
    """Keep each distinct (function, argument specs) handed to ``fuse``: the kernels a real GPU
    would build (``kernels``, read by the NVRTC compile check)."""
    kernels.setdefault((fn, tuple(spec(v) for v in args)), None)


kernels = {}  # (fused function, argument specs) -> None, in first-call order


def _traced(fn, args):
    """fn(*args) with the device in fusion mode, checking what the tracer would check."""
    global _fusing
    _fusing += 1
    _trace[0] = trace = _Trace()
    try:
        r = fn(*args)
        if trace.reduced:
            for v in r if isinstance(r, tuple) else (r,):
                if isinstance(v, ndarray) and id(v) not in trace.post:
                    _refuse("a result from before the kernel's reduction (CuPy: 'Shape mismatch')")
    finally:
        _fusing -= 1
        _trace[0] = None
    return r


_SPECIAL = {"asarray": asarray, "array": array, "asnumpy": asnumpy, "get_array_module": get_array_module, "fuse": fuse}


# -- the array type ------------------------------------------------------------------------------


def _binary(name, reflected=False):
    def op(self, other):
        if isinstance(other, numpy.ndarray):
            raise TypeError(
                f"cupy.ndarray {name}: the other operand is a numpy.ndarray; move it to the device "
                f"explicitly (cupy.asarray)"
            )
        if not isinstance(other, (ndarray, int, float, bool, complex, numpy.generic)):
            return NotImplemented
        if _fusing and reflected and name == "power":
            _refuse("x ** proxy (the fusion proxy has no __rpow__; write cupy.power(x, proxy))")
        f = getattr(_ns(), name)
        return f(other, self) if reflected else f(self, other)

    return op


def _inplace(name):
    def op(self, other):
        getattr(_ns(), name)(self, other, out=self)
        return self

    return op


def _method(name, launches=1):
    allowed = cupy_api.NDARRAY[name] or ()

    def m(self, *args, **kwargs):
        if _fusing:
            # The ordinary fusion's array proxy has no reduction methods: x.sum() inside a fused
            # function sends the whole function to new_fusion. cupy.sum(x) traces.
            _refuse(f"ndarray.{name} (write cupy.{name}(x, ...) instead)")
        _check_keywords(f"cupy.ndarray.{name}", allowed, kwargs)
        where = f"cupy.ndarray.{name}"
        out = kwargs.get("out")
        a, kw = _dev(args, where), {k: _dev(v, where) for k, v in kwargs.items()}
        r = _exec(lambda: getattr(self._a, name)(*a, **kw), self, args, kwargs)
        _launch(name, launches)
        return out if out is not None else _wrap(r, name)

    m.__name__ = name
    return m


def _host_property(name, get=None):
    def prop(self):
        if _fusing:
            _refuse(f"ndarray.{name}")
        return get(self._a) if get else getattr(self._a, name)

    return property(prop)


def _unfusable(fn):
    """A method the ordinary fusion's array proxy lacks: refused inside ``fuse``."""

    def m(self, *args, **kwargs):
        if _fusing:
            _refuse(f"ndarray.{fn.__name__}")
        return fn(self, *args, **kwargs)

    m.__name__ = fn.__name__
    return m


def _wrapped_indices(key, shape):
    """CuPy wraps an out-of-range integer-array index where NumPy raises (CuPy's documented
    difference): the fake device does as CuPy does."""
    keys = key if isinstance(key, tuple) else (key,)
    if any(k is None or k is Ellipsis for k in keys):
        return key
    out = tuple(
        numpy.mod(k, shape[axis]) if isinstance(k, numpy.ndarray) and k.dtype.kind in "iu" else k
        for axis, k in enumerate(keys)
    )
    return out if isinstance(key, tuple) else out[0]


def _has_bool_array(key):
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, ndarray) and k.dtype == numpy.bool_ for k in keys)


def _is_basic(key):
    keys = key if isinstance(key, tuple) else (key,)
    return all(k is None or k is Ellipsis or isinstance(k, (slice, int, numpy.integer)) for k in keys)


class ndarray:
    """A device array: a NumPy array that only this module's functions may read or write."""

    __slots__ = ("_a", "__weakref__")
    __array_ufunc__ = None  # NumPy ufuncs and operators with one of these raise TypeError
    __hash__ = None

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        self._a = numpy.empty(shape, dtype=dtype, order=order)

    def __array__(self, *args, **kwargs):
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a "
            "NumPy array explicitly."
        )

    def __array_function__(self, func, types, args, kwargs):
        return NotImplemented

    # -- host side: metadata, no device work --
    # Inside ``fuse`` an array is a proxy that knows only its dtype and ndim.
    shape = _host_property("shape")
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = _host_property("size")
    itemsize = _host_property("itemsize")
    nbytes = _host_property("nbytes")
    strides = _host_property("strides")
    flags = _host_property("flags")
    T = _host_property("T", lambda a: _wrap(a.T, "T"))
    mT = _host_property("mT", lambda a: _wrap(a.mT, "mT"))
    # Views of a complex array's parts, as CuPy's (no launch).
    real = _host_property("real", lambda a: _wrap(a.real, "real"))
    imag = _host_property("imag", lambda a: _wrap(a.imag, "imag"))

    def __len__(self):
        if _fusing:
            _refuse("len()")
        return len(self._a)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    # -- views --
    @_unfusable
    def transpose(self, *axes):
        return _wrap(self._a.transpose(*axes), "transpose")

    @_unfusable
    def swapaxes(self, a, b):
        return _wrap(self._a.swapaxes(a, b), "swapaxes")

    @_unfusable
    def squeeze(self, axis=None):
        return _wrap(self._a.squeeze(axis), "squeeze")

    @_unfusable
    def view(self, dtype=None, type=None):
        return _wrap(self._a.view() if dtype is None else self._a.view(dtype), "view")

    def reshape(self, *shape, order="C", copy=None):
        if _fusing:
            raise TypeError("cupy.fuse cannot fuse ndarray.reshape")
        r = self._a.reshape(*shape, order=order)
        if not numpy.may_share_memory(r, self._a):
            _launch("reshape(copy)")
            r = _exec(lambda: self._a.reshape(*shape, order=order).copy(), self)
        return _wrap(r, "reshape")

    @_unfusable
    def ravel(self, order="C"):
        r = self._a.ravel(order)
        if not numpy.may_share_memory(r, self._a):
            _launch("ravel(copy)")
            r = _exec(lambda: self._a.ravel(order).copy(), self)
        return _wrap(r, "ravel")

    # -- device work --
    def astype(self, dtype, order=None, casting=None, subok=None, copy=True):
        post = False
        if _fusing:
            if (order, casting, subok) != (None, None, None):
                _refuse("ndarray.astype with order, casting or subok")
            post = _fused_operands("astype", (self,))
        if not copy and numpy.dtype(dtype) == self._a.dtype:
            return self
        _launch("astype")
        r = _wrap(_exec(lambda: self._a.astype(dtype, order=order or "K"), self), "astype")
        return _trace[0].mark(r) if post else r

    def copy(self, order="C"):
        if _fusing:
            return _ns().copy(self)
        _launch("copy")
        return _wrap(_exec(lambda: self._a.copy(order), self), "copy")

    @_unfusable
    def fill(self, value):
        if isinstance(value, (numpy.ndarray, ndarray)):
            raise TypeError("ndarray.fill takes a scalar")
        _launch("fill")
        _exec(lambda: self._a.fill(value), self)

    def __getitem__(self, key):
        if _fusing:
            raise TypeError("cupy.fuse cannot fuse indexing")
        if _has_bool_array(key):
            _sync("getitem(bool mask)")
        k = _wrapped_indices(_dev(key, "cupy.ndarray indexing"), self._a.shape)
        if not _is_basic(k):
            _launch("getitem(gather)")
            return _wrap(_exec(lambda: self._a[k], self, key), "getitem")
        r = self._a[k]
        if isinstance(r, numpy.generic):
            # CuPy's a[i] of a 1-d array is a 0-d view of its memory (NumPy's is a copy).
            r = self._a[(*(k if isinstance(k, tuple) else (k,)), Ellipsis)]
        return _wrap(r, "getitem")

    def __setitem__(self, key, value):
        if _fusing:
            if key is not Ellipsis and key != slice(None):
                _refuse("indexed assignment other than x[...] = v or x[:] = v")
            _fused_operands("x[...] = v", (self, value))
            self._a[...] = _dev(value, "cupy.fuse")
            return
        if isinstance(value, numpy.ndarray):
            raise TypeError(
                "cupy.ndarray assignment: the value is a numpy.ndarray; move it to the device "
                "explicitly (cupy.asarray)"
            )
        if _has_bool_array(key):
            _sync("setitem(bool mask)")
        _launch("setitem")
        index = _wrapped_indices(_dev(key, "cupy.ndarray indexing"), self._a.shape)
        v = _dev(value, "cupy.ndarray assignment")

        def assign():
            self._a[index] = v

        _exec(assign, self, key, value)

    # -- to the host: every one a synchronisation --
    def get(self, stream=None, order="C", out=None, blocking=True):
        _sync("get")
        return numpy.array(self._a, order=order)

    def item(self):
        _sync("item")
        return self._a.item()

    def tolist(self):
        _sync("tolist")
        return self._a.tolist()

    def __float__(self):
        _sync("float()")
        return float(self._a)

    def __int__(self):
        _sync("int()")
        return int(self._a)

    def __index__(self):
        _sync("index()")
        return self._a.__index__()

    def __bool__(self):
        _sync("bool()")
        return bool(self._a)

    def __repr__(self):
        _sync("repr()")
        return repr(self._a)

    __str__ = __repr__

    def __neg__(self):
        return _ns().negative(self)

    @_unfusable
    def __pos__(self):
        return self.copy()

    @_unfusable
    def __abs__(self):
        return _ns().absolute(self)

    def __invert__(self):
        return _ns().invert(self)

    @_unfusable
    def __matmul__(self, other):
        return _ns().matmul(self, other)

    @_unfusable
    def __rmatmul__(self, other):
        return _ns().matmul(other, self)

    @_unfusable
    def dot(self, other):
        return _ns().dot(self, other)


for _name, _uf in (
    ("add", "add"), ("sub", "subtract"), ("mul", "multiply"), ("truediv", "true_divide"),
    ("floordiv", "floor_divide"), ("mod", "remainder"), ("pow", "power"), ("and", "bitwise_and"),
    ("or", "bitwise_or"), ("xor", "bitwise_xor"), ("lshift", "left_shift"), ("rshift", "right_shift"),
):
    setattr(ndarray, f"__{_name}__", _binary(_uf))
    setattr(ndarray, f"__r{_name}__", _binary(_uf, reflected=True))
    setattr(ndarray, f"__i{_name}__", _inplace(_uf))
for _name, _uf in (("lt", "less"), ("le", "less_equal"), ("gt", "greater"), ("ge", "greater_equal"),
                   ("eq", "equal"), ("ne", "not_equal")):
    setattr(ndarray, f"__{_name}__", _binary(_uf))
for _name in ("sum", "mean", "max", "min", "argmax", "argmin", "prod", "all", "any", "var", "std",
              "clip", "cumsum", "take", "repeat", "flatten"):
    setattr(ndarray, _name, _method(_name))
ndarray.data = property(lambda self: _refuse("ndarray.data") if _fusing else _Pointer(self))
ndarray.__module__ = "cupy"  # as the real type reports itself; xpnet's backend looks at it
del _name, _uf


# -- the namespace that stands in for the ``cupy`` module ----------------------------------------


class _Stream:
    ptr = 0  # the default stream's handle

    def synchronize(self):
        _sync("stream.synchronize")


_gpus = [1]  # how many GPUs the fake machine has (installed(gpus=...))
_device = [0]  # the current one


class _Device:
    def __init__(self, device=None):
        self.id = _device[0] if device is None else int(device)
        if not 0 <= self.id < _gpus[0]:
            raise RuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal {self.id}")

    def use(self):
        _device[0] = self.id
        return self

    def synchronize(self):
        _sync("device.synchronize")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _MemoryPool:
    def set_limit(self, size=None, fraction=None):
        _limit[0] = int(size or 0)

    def get_limit(self):
        return _limit[0]

    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_all_blocks(self, stream=None):
        pass


class _Generator:
    """``cupy.random.Generator``: its creation launches the generator's init kernel."""

    def __init__(self, seed):
        _launch("random.default_rng")
        self._g = numpy.random.default_rng(seed)

    def random(self, size=None, dtype=numpy.float64, out=None):
        _launch("random.random")
        return _wrap(self._g.random(size, dtype=dtype), "random.random")


def _random_namespace():
    return types.SimpleNamespace(default_rng=_Generator, seed=lambda seed=None: None)


class _Pointer:
    """``ndarray.data``: the address of an array's first element, as ``cupy.cuda.MemoryPointer``."""

    def __init__(self, array):
        self.ptr = array._a.__array_interface__["data"][0]
        _pointed[self.ptr] = array


_pointed = weakref.WeakValueDictionary()  # address -> the array whose data it is


class _NcclCommunicator:
    """``cupy.cuda.nccl.NcclCommunicator`` on the fake device: an in-place sum over the ranks of
    ``MPI.COMM_WORLD`` (the processes an MPI launcher started), one launch and no host copy, as
    NCCL sums device memory on the devices."""

    def __init__(self, ndev, comm_id, rank):
        from mpi4py import MPI

        if not isinstance(comm_id, bytes) or len(comm_id) != 128:
            raise ValueError("NCCL unique id: 128 bytes from nccl.get_unique_id() on one rank")
        self.comm = MPI.COMM_WORLD
        if (ndev, rank) != (self.comm.Get_size(), self.comm.Get_rank()):
            raise ValueError(f"NcclCommunicator({ndev}, ..., {rank}) in a world of {self.comm.Get_size()}")
        if len(set(self.comm.allgather(comm_id))) != 1:
            raise RuntimeError("ncclInvalidUsage: the ranks passed different unique ids")

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):  # noqa: N802 (NCCL's name)
        from mpi4py import MPI

        send, recv = _pointed.get(sendbuf), _pointed.get(recvbuf)
        if send is None or recv is None:
            raise RuntimeError("ncclInvalidArgument: a buffer that is no device array's data")
        if send.size != count or recv.size != count or not recv.flags.c_contiguous:
            raise RuntimeError("ncclInvalidArgument: count and buffers do not match (contiguous arrays only)")
        if (datatype, op) != (_NCCL_TYPES[send.dtype.type], _NCCL["NCCL_SUM"]):
            raise RuntimeError("ncclInvalidArgument: datatype or op")
        if _capture[0] is not None:
            # NCCL can be captured on a GPU, but the fake device would sum now, not at replay.
            raise GraphCaptureError("nccl.allReduce during CUDA-graph capture: the fake device cannot record it")
        _launch("nccl.allReduce")
        total = numpy.array(send._a)
        self.comm.Allreduce(MPI.IN_PLACE, total, op=MPI.SUM)
        recv._a[...] = total


_NCCL = {"NCCL_FLOAT32": 7, "NCCL_FLOAT64": 8, "NCCL_SUM": 0}
_NCCL_TYPES = {numpy.float32: 7, numpy.float64: 8}


def _unique_id():
    return bytes(numpy.random.default_rng().integers(0, 256, 128, dtype=numpy.uint8))


def _nccl_namespace():
    return types.SimpleNamespace(available=True, get_unique_id=_unique_id, NcclCommunicator=_NcclCommunicator, **_NCCL)


def _cuda_namespace():
    runtime = types.SimpleNamespace(getDeviceCount=lambda: _gpus[0], getDevice=lambda: _device[0])
    memory = types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError)
    return types.SimpleNamespace(
        runtime=runtime, memory=memory, Device=_Device, get_current_stream=lambda: _Stream(),
        Stream=_CaptureStream, Graph=_Graph, MemoryPool=MemoryPool, using_allocator=using_allocator,
        nccl=_nccl_namespace(),
    )


class FakeCuPy(types.ModuleType):
    """The ``cupy`` namespace of the fake device: CuPy's names only, made on first use."""

    def __init__(self):
        super().__init__("cupy", "A strict, counting stand-in for CuPy (xpnet.testing.fakecupy).")
        pool = _MemoryPool()
        self.__dict__.update(_CONSTANTS)
        self.ndarray = ndarray
        self.cuda = _cuda_namespace()
        self.random = _random_namespace()
        self.get_default_memory_pool = lambda: pool
        self.__version__ = cupy_api.VERSION
        self.counts = counts
        self.kernels = kernels

    def __getattr__(self, name):
        if name in cupy_api.UFUNCS and hasattr(numpy, name):
            f = _ufunc(name)
        elif name in _SPECIAL:
            f = _SPECIAL[name]
        elif isinstance(cupy_api.FUNCTIONS.get(name), tuple) and callable(getattr(numpy, name, None)):
            f = _function(name)
        else:
            raise AttributeError(f"module 'cupy' has no attribute {name!r} (or the fake device lacks it)")
        self.__dict__[name] = f
        return f


def _ns():
    return sys.modules["cupy"]


@contextlib.contextmanager
def installed(gpus=1):
    """Put a fresh fake device in ``sys.modules["cupy"]`` for the duration (counters reset), on
    a machine with ``gpus`` GPUs (device 0 current); yields it. ``backend.use("cupy")`` then
    selects it."""
    previous = sys.modules.get("cupy")
    fake = FakeCuPy()
    counts.reset()
    kernels.clear()
    _limit[0] = 0
    _gpus[0], _device[0] = gpus, 0
    sys.modules["cupy"] = fake
    try:
        yield fake
    finally:
        _limit[0] = 0
        _capture[0] = _allocator[0] = None
        if previous is None:
            sys.modules.pop("cupy", None)
        else:
            sys.modules["cupy"] = previous
