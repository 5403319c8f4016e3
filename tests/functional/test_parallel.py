"""Chunk loops split over threads: every chunk once, in order per thread, BLAS limited inside,
bit-identical results for a fixed thread count."""

import os
import threading

import numpy
import pytest
from hypothesis import given
from hypothesis import strategies as st
from _support import CASES, randn

from xpnet import functional as F
from xpnet.functional import parallel


@pytest.fixture
def threads():
    """Set the kernels' thread count for one test."""
    previous = parallel.threads()
    yield parallel.set_threads
    parallel.set_threads(previous)


@CASES
@given(n=st.integers(0, 40), nb=st.integers(1, 9), k=st.integers(1, 5))
def test_split_deals_every_chunk_once_in_contiguous_runs(n, nb, k):
    runs = parallel.split(n, nb, k)
    assert len(runs) == k
    flat = [c for run in runs for c in run]
    assert flat == [(n0, min(n, n0 + nb)) for n0 in range(0, n, nb)]
    sizes = [len(run) for run in runs]
    assert max(sizes, default=0) - min(sizes, default=0) <= 1


@pytest.mark.parametrize("k", [1, 2, 3])
def test_for_chunks_runs_each_chunk_on_its_threads_in_order(threads, k):
    threads(k)
    seen = []
    names = {}
    lock = threading.Lock()

    def body(t, n0, n1):
        with lock:
            seen.append((t, n0, n1))
            names.setdefault(t, set()).add(threading.current_thread().name)

    parallel.for_chunks(numpy, 11, 2, body)
    assert sorted((n0, n1) for _, n0, n1 in seen) == [(n0, min(11, n0 + 2)) for n0 in range(0, 11, 2)]
    for t in range(k):
        mine = [(n0, n1) for u, n0, n1 in seen if u == t]
        assert mine == parallel.split(11, 2, k)[t]
    assert all(len(v) == 1 for v in names.values())  # an index's chunks never run concurrently


def test_for_chunks_limits_blas_to_one_thread_inside(threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    threads(2)
    inside = []

    def body(t, n0, n1):
        if t == 0:
            inside.extend(i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        parallel.for_chunks(numpy, 4, 1, body)
        after = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    assert inside and set(inside) == {1}
    assert set(after) == {2}


def test_an_exception_in_a_worker_reaches_the_caller(threads):
    threads(2)

    def body(t, n0, n1):
        if t == 1:
            raise ArithmeticError("boom")

    with pytest.raises(ArithmeticError, match="boom"):
        parallel.for_chunks(numpy, 4, 1, body)


def test_chunk_size_leaves_a_chunk_for_every_thread(threads):
    threads(2)
    assert parallel.chunk_size(numpy, 8, 10, 1000) == 4
    assert parallel.chunk_size(numpy, 8, 10, 20) == 2
    assert parallel.chunk_size(numpy, 1, 10, 1000) == 1
    threads(1)
    assert parallel.chunk_size(numpy, 8, 10, 1000) == 8


def test_set_threads_rejects_nonsense(threads):
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ValueError):
            threads(bad)


def test_xpnet_threads_must_be_a_positive_integer(monkeypatch):
    too_many = str(max(os.cpu_count() or 1, parallel.cpu_count()) + 1)
    for bad in ("0", "two", "-3", too_many, "100000"):
        monkeypatch.setenv("XPNET_THREADS", bad)
        with pytest.raises(ValueError, match="XPNET_THREADS"):
            parallel._default_threads()
    monkeypatch.setenv("XPNET_THREADS", "1")
    assert parallel._default_threads() == 1


def test_without_threadpoolctl_the_kernels_run_serially(threads, monkeypatch):
    monkeypatch.setattr(parallel, "ThreadpoolController", None)
    threads(4)
    assert parallel.threads() == 1


def test_a_fixed_thread_count_gives_bit_identical_gradients(threads, rng):
    threads(2)
    x = randn(numpy, rng, 6, 8, 9, 9)
    w = randn(numpy, rng, 16, 8, 3, 3)
    gamma, beta = numpy.ones(16, numpy.float32), numpy.zeros(16, numpy.float32)
    dy = randn(numpy, rng, 6, 16, 4, 4)
    runs = []
    for _ in range(2):
        y, cache, mean, var = F.conv_bn_relu_train_forward(x, w, gamma, beta, pool=True, ws=F.Workspace())
        runs.append((y, mean, var, *F.conv_bn_relu_backward(dy, cache, ws=F.Workspace())))
    for a, b in zip(*runs):
        numpy.testing.assert_array_equal(a, b)


def test_the_callers_errstate_holds_in_every_thread(threads):
    threads(2)
    seen = {}

    def body(t, n0, n1):
        seen[t] = numpy.geterr()["over"]

    with numpy.errstate(over="ignore"):
        parallel.for_chunks(numpy, 8, 1, body)
    assert seen == {0: "ignore", 1: "ignore"}
