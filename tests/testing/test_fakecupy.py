"""The fake device is as strict as CuPy where a GPU run would break, and counts what it costs."""

import numpy
import pytest

from xpnet import backend
from xpnet.testing import cupy_api, fakecupy

import _fuse_cases


@pytest.fixture
def cp(fake_cupy):
    return backend.xp()


def test_arrays_are_their_own_type_and_never_turn_into_numpy_silently(cp):
    a = cp.ones((2, 3), dtype=numpy.float32)
    assert type(a) is cp.ndarray and not isinstance(a, numpy.ndarray)
    with pytest.raises(TypeError, match="Implicit conversion"):
        numpy.asarray(a)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        a + numpy.ones(3, dtype=numpy.float32)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        numpy.ones(3, dtype=numpy.float32) * a
    with pytest.raises(TypeError):
        numpy.exp(a)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        cp.matmul(a, numpy.ones((3, 2), dtype=numpy.float32))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        a[0] = numpy.zeros(3, dtype=numpy.float32)
    numpy.testing.assert_array_equal(cp.asnumpy(a + 1.0), numpy.full((2, 3), 2.0))


def test_only_cupys_names_and_keywords(cp):
    numpy_only = [n for n in ("busday_count", "fromfunction", "genfromtxt") if n not in cupy_api.FUNCTIONS]
    assert numpy_only
    for name in numpy_only:
        with pytest.raises(AttributeError, match="no attribute"):
            getattr(cp, name)
    a = cp.zeros(4, dtype=numpy.float32)
    with pytest.raises(TypeError, match="'where'"):
        cp.add(a, 1.0, out=a, where=a > 0)  # NumPy takes where=, CuPy's ufuncs do not
    with pytest.raises(TypeError, match="'out'"):
        cp.einsum("i,i->", a, a, out=cp.zeros((), dtype=numpy.float32))
    cp.copyto(a, 2.0, where=a == 0)  # copyto does take where=
    assert float(a.sum()) == 8.0


def test_the_fakes_names_are_all_cupys():
    fake = fakecupy.FakeCuPy()
    for name in list(fakecupy._SPECIAL) + list(fakecupy._CONSTANTS):
        assert name in cupy_api.FUNCTIONS or name in cupy_api.UFUNCS, name
    for name in vars(fakecupy.ndarray):
        if not name.startswith("_"):
            assert name in cupy_api.NDARRAY, name
    for path in cupy_api.DOTTED:
        obj = fake
        for part in path.split("."):
            obj = getattr(obj, part)


@pytest.mark.parametrize(
    "move",
    [float, int, bool, lambda a: a.item(), lambda a: a.get(), lambda a: backend.asnumpy(a), lambda a: a.tolist()],
    ids=["float", "int", "bool", "item", "get", "asnumpy", "tolist"],
)
def test_every_move_to_the_host_is_one_counted_sync(cp, fake_cupy, move):
    a = cp.ones((), dtype=numpy.float32)
    before = fake_cupy.snapshot()
    move(a)
    delta = fake_cupy.since(before)
    assert delta["syncs"] == 1 and delta["to_host"] == 1 and delta["ops"] == 0


def test_launches_are_counted_and_views_are_free(cp, fake_cupy):
    a = cp.empty((4, 6), dtype=numpy.float32)
    before = fake_cupy.snapshot()
    a.T, a[1:3], a.reshape(6, 4), a.transpose(1, 0)
    assert fake_cupy.since(before)["ops"] == 0
    a.fill(1.0)
    b = a * 2.0 + 1.0
    b.sum()
    b.T.reshape(24)  # not contiguous: a copy
    assert fake_cupy.since(before) == dict(ops=5, syncs=0, to_host=0, to_device=0, float64=0)


def test_boolean_masks_sync_and_copyto_does_not(cp, fake_cupy):
    y = cp.arange(6, dtype=numpy.float32)
    arg = cp.zeros(6, dtype=numpy.uint8)
    before = fake_cupy.snapshot()
    arg[y > 2] = 1
    assert fake_cupy.since(before)["syncs"] == 1
    before = fake_cupy.snapshot()
    cp.copyto(arg, 2, where=y > 3)
    assert fake_cupy.since(before)["syncs"] == 0
    assert backend.asnumpy(arg).tolist() == [0, 0, 0, 1, 2, 2]


def test_host_copies_and_float64_are_counted(cp, fake_cupy):
    before = fake_cupy.snapshot()
    a = cp.asarray(numpy.ones(3, dtype=numpy.float32))
    cp.asarray(a)  # already on the device: no copy
    a.astype(numpy.float64)
    delta = fake_cupy.since(before)
    assert delta["to_device"] == 1 and delta["float64"] == 1


def test_fuse_is_one_launch_and_only_fuses_elementwise_work(cp, fake_cupy):
    def axpy(a, x, y):
        return cp.maximum(a * x + y, 0.0)

    f = cp.fuse(axpy)
    x = cp.arange(4, dtype=numpy.float32)
    before = fake_cupy.snapshot()
    r = f(numpy.float32(2.0), x, x)
    assert fake_cupy.since(before)["ops"] == 1
    numpy.testing.assert_array_equal(backend.asnumpy(r), [0.0, 3.0, 6.0, 9.0])

    @cp.fuse()
    def syncs(x):
        return x * float(x.sum())

    with pytest.raises(TypeError, match="fuse"):
        syncs(x)

    @cp.fuse()
    def copies(x):
        return cp.copyto(x, 1.0)

    with pytest.raises(TypeError, match="fuse"):
        copies(x)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        f(1.0, numpy.ones(4, dtype=numpy.float32), x)


def test_out_of_memory_is_cupys_error(cp):
    cp.get_default_memory_pool().set_limit(size=1 << 10)
    with pytest.raises(MemoryError) as e:
        cp.zeros(1 << 12, dtype=numpy.float32)
    assert isinstance(e.value, cp.cuda.memory.OutOfMemoryError)


def test_installed_restores_what_was_there():
    import sys

    before = sys.modules.get("cupy")
    with fakecupy.installed() as dev:
        assert sys.modules["cupy"] is dev
    assert sys.modules.get("cupy") is before



@pytest.mark.parametrize("case", _fuse_cases.REFUSED, ids=lambda c: c[0].__name__)
def test_fuse_refuses_what_the_ordinary_fusion_cannot_trace(cp, case):
    # Each of these sends real CuPy to its experimental new_fusion (cupy/_core/fusion.pyx and
    # its array proxy; tests/testing/test_nvrtc_kernels.py shows it with the real package):
    # the fake device makes that an error instead.
    fn, make_args = case
    with pytest.raises(TypeError, match="cupy.fuse cannot fuse"):
        cp.fuse(fn)(*make_args(cp))


def test_fuse_traces_a_reduction_and_what_follows_it(cp, fake_cupy):
    x = cp.asarray(numpy.arange(12, dtype=numpy.float32).reshape(4, 3))
    a = cp.asarray(numpy.ones(3, dtype=numpy.float32))
    before = fake_cupy.snapshot()
    s = cp.fuse(_fuse_cases.centered_sum)(x, a)
    r = cp.fuse(_fuse_cases.after_reduction)(x, a)
    assert fake_cupy.since(before)["ops"] == 2
    numpy.testing.assert_array_equal(backend.asnumpy(s), [14.0, 18.0, 22.0])
    numpy.testing.assert_allclose(backend.asnumpy(r), numpy.sqrt(numpy.array([14.0, 18.0, 22.0]) ** 2 + 1))


def test_fuse_refuses_odd_arguments(cp):
    x = cp.ones(3, dtype=numpy.float32)
    with pytest.raises(TypeError, match="Invalid argument type"):
        cp.fuse(_fuse_cases.centered_sum)(x, [1, 2, 3])


def test_fuse_records_each_kernel_once_per_argument_layout(cp, fake_cupy):
    x = cp.ones((4, 3), dtype=numpy.float32)
    f = cp.fuse(_fuse_cases.centered_sum)
    f(x, x[0])
    f(x, x[1])
    f(x.T, x[:, 0])
    assert [(fn, len(specs)) for (fn, specs) in cp.kernels] == [(_fuse_cases.centered_sum, 2)] * 2


def test_an_out_of_range_gather_wraps_as_cupys_does(cp):
    a = cp.asarray(numpy.arange(6, dtype=numpy.float32).reshape(2, 3))
    got = a[cp.arange(2), cp.asarray(numpy.array([3, -1]))]
    numpy.testing.assert_array_equal(backend.asnumpy(got), [0.0, 5.0])


def _shifted(u, v, s):
    return u - v * s


def _double_then_shift(cp, a, b, shift):
    """A little step with an in-place write, a new array, a fused kernel and an indexed copy."""
    t = a * 2.0
    b += t
    c = backend.fuse(_shifted)(b, t, shift)
    a[1:] = c[:-1]
    return c


def test_a_capture_records_without_running_and_a_replay_runs_it(cp, fake_cupy):
    f = numpy.float32
    a = cp.asarray(numpy.arange(4, dtype=f))
    b = cp.ones(4, dtype=f)
    shift = cp.asarray(numpy.full((), 0.5, dtype=f))  # a device scalar, updated between replays
    ref_a, ref_b = numpy.arange(4, dtype=f), numpy.ones(4, dtype=f)
    pool = cp.cuda.MemoryPool()
    stream = cp.cuda.Stream(non_blocking=True)
    with cp.cuda.using_allocator(pool.malloc):
        _double_then_shift(cp, a.copy(), b.copy(), shift)  # the warm-up makes the allocations
        with stream:
            stream.begin_capture()
            c = _double_then_shift(cp, a, b, shift)
            graph = stream.end_capture()
    # Nothing ran: the inputs are as they were, the new result holds garbage.
    numpy.testing.assert_array_equal(a.get(), ref_a)
    numpy.testing.assert_array_equal(b.get(), ref_b)
    assert numpy.isnan(c.get()).all()
    for k in range(3):
        shift[...] = cp.asarray(numpy.full((), 0.5 + k, dtype=f))
        before = fake_cupy.snapshot()
        graph.launch(stream)
        assert fake_cupy.since(before)["ops"] == 1
        t = ref_a * 2
        ref_b += t
        ref_c = ref_b - t * f(0.5 + k)
        ref_a[1:] = ref_c[:-1]
        numpy.testing.assert_array_equal(c.get(), ref_c)
        numpy.testing.assert_array_equal(a.get(), ref_a)


def test_a_capture_refuses_host_reads_host_copies_and_new_allocations(cp):
    a = cp.ones(4, dtype=numpy.float32)
    stream = cp.cuda.Stream(non_blocking=True)
    pool = cp.cuda.MemoryPool()
    with cp.cuda.using_allocator(pool.malloc):
        a * 2.0  # the warm-up: one 16-byte result
        for bad, match in (
            (lambda: float(a.sum()), "host read"),
            (lambda: cp.asarray(numpy.ones(4, dtype=numpy.float32)), "host-to-device"),
            (lambda: (a * 2.0, a * 3.0), "did not make"),  # the second result is new
            (lambda: cp.ones(8, dtype=numpy.float32), "did not make"),
        ):
            with stream:
                stream.begin_capture()
                with pytest.raises(fakecupy.GraphCaptureError, match=match):
                    bad()
                stream.end_capture()
