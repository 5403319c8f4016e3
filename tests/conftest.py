"""Shared fixtures: run each test body on every available backend."""

from __future__ import annotations

import numpy
import pytest

from xpnet import backend


def _cupy_usable() -> bool:
    try:
        backend.use("cupy")
    except backend.BackendError:
        return False
    finally:
        backend.use("numpy")
    return True


BACKEND_PARAMS = [
    "numpy",
    pytest.param("cupy", marks=pytest.mark.skipif(not _cupy_usable(), reason="no CuPy/GPU")),
]


@pytest.fixture(params=BACKEND_PARAMS)
def xp(request):
    """The array module of each available backend, selected for the duration of the test."""
    mod = backend.use(request.param)
    yield mod
    backend.use("numpy")


@pytest.fixture
def rng():
    return numpy.random.default_rng(1234)


def pytest_configure(config):
    config.addinivalue_line("markers", "torch: needs the PyTorch reference")
