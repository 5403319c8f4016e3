import numpy
import pytest

from xpnet import backend


def test_numpy_is_the_default_and_round_trips():
    assert backend.name() == "numpy"
    a = backend.to_device([1.0, 2.0], dtype=numpy.float32)
    assert isinstance(a, numpy.ndarray) and a.dtype == numpy.float32
    assert backend.asnumpy(a) is a or numpy.array_equal(backend.asnumpy(a), a)


def test_unknown_backend_is_one_clear_error():
    with pytest.raises(backend.BackendError, match="unknown backend 'tpu'"):
        backend.use("tpu")
    assert backend.name() == "numpy"


def test_cupy_without_gpu_fails_with_a_sentence(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_cupy(name, *args, **kwargs):
        if name == "cupy":
            raise ImportError("No module named 'cupy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cupy)
    with pytest.raises(backend.BackendError, match="needs CuPy and a CUDA GPU"):
        backend.use("cupy")
    assert backend.name() == "numpy"


def test_get_array_module_rejects_mixed_arrays():
    class FakeCupyArray:
        pass

    FakeCupyArray.__module__ = "cupy._core.core"
    with pytest.raises(backend.BackendError, match="mixed NumPy and CuPy"):
        backend.get_array_module(numpy.zeros(2), FakeCupyArray())
    assert backend.get_array_module(numpy.zeros(2), None) is numpy


def test_uniform_is_reproducible_from_host_state(xp):
    g = numpy.random.default_rng(7)
    state = g.bit_generator.state
    a = backend.asnumpy(backend.uniform(g, (3, 4)))
    g.bit_generator.state = state
    b = backend.asnumpy(backend.uniform(g, (3, 4)))
    assert a.dtype == numpy.float32 and numpy.array_equal(a, b)
    assert 0.0 <= a.min() and a.max() < 1.0


def test_core_imports_without_torch_or_cupy():
    import subprocess
    import sys

    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name.split('.')[0] in ('torch', 'cupy'):\n"
        "        raise ImportError('blocked ' + name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "import xpnet, xpnet.nn, xpnet.functional, xpnet.optim, xpnet.models, xpnet.gradient_check\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_cuda_extras_bring_the_toolkit_a_driver_only_machine_lacks():
    # CuPy alone cannot build a kernel where only the NVIDIA driver is installed (no NVRTC, no
    # cuda_fp16.h); its [ctk] extra brings the toolkit's wheels. The error above names these extras.
    from importlib.metadata import requires

    for extra, package in (("cuda12", "cupy-cuda12x[ctk]"), ("cuda13", "cupy-cuda13x[ctk]")):
        lines = [r for r in requires("xpnet") if f'extra == "{extra}"' in r]
        assert any(r.replace(" ", "").startswith(package) for r in lines), lines


def test_using_gives_back_the_backend_selected_before_even_on_error():
    from xpnet.testing import fakecupy

    with fakecupy.installed(), backend.using("cupy") as outer:
        assert backend.name() == "cupy" and backend.xp() is outer
        with backend.using("numpy") as inner:
            assert inner is numpy and backend.name() == "numpy"
        assert backend.xp() is outer  # the cupy it was, not a fresh import
        with pytest.raises(ZeroDivisionError):
            with backend.using("numpy"):
                1 / 0
        assert backend.name() == "cupy"
        with pytest.raises(backend.BackendError):
            with backend.using("tpu"):
                pass
        assert backend.xp() is outer
    assert backend.name() == "numpy"


def test_a_rank_takes_the_gpu_of_its_local_rank():
    # Under MPI, ranks on one machine share its GPUs round-robin (distributed.world binds them).
    from xpnet.testing import fakecupy

    with fakecupy.installed(gpus=3):
        try:
            backend.bind_local_rank(4)
            backend.use("cupy")
            assert backend.gpu_index() == 1
            backend.bind_local_rank(2)
            assert backend.gpu_index() == 2
        finally:
            backend.bind_local_rank(0)
            backend.use("numpy")
