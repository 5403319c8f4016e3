"""Shared fixtures: run each test body on every available backend; the real MNIST found as CI
finds it."""

from __future__ import annotations

import os
from pathlib import Path

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


def shared_mnist(repo_root) -> Path | None:
    """``../shared/data/mnist`` beside the repository, where this project's machines keep MNIST
    (the folder .ci/run points XPNET_DATA at), if it is there."""
    folder = Path(repo_root).resolve().parent / "shared" / "data" / "mnist"
    return folder if folder.is_dir() else None


def pytest_configure(config):
    config.addinivalue_line("markers", "torch: needs the PyTorch reference")
    # The tests on real data then run from a plain `python -m pytest` as they do under .ci/run.
    if not os.environ.get("XPNET_DATA"):
        found = shared_mnist(Path(__file__).resolve().parents[1])
        if found is not None:
            os.environ["XPNET_DATA"] = str(found)
