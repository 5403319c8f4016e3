"""Shared fixtures: run each test body on every available backend; the real MNIST found as CI
finds it.

Backends: "numpy" always; "fake-cupy", the strict counting stand-in for CuPy
(``xpnet.testing.fakecupy``), selected through the real backend seam, always; "cupy" where CuPy
and a GPU are present.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

# PyTorch's OpenMP threads spin while they wait; on a machine shared with other work that makes
# the torch-backed tests many times slower, so they sleep instead (read when torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy  # noqa: E402
import pytest  # noqa: E402

from xpnet import backend  # noqa: E402
from xpnet.testing import fakecupy  # noqa: E402


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
    "fake-cupy",
    pytest.param("cupy", marks=pytest.mark.skipif(not _cupy_usable(), reason="no CuPy/GPU")),
]


@pytest.fixture(params=BACKEND_PARAMS)
def xp(request):
    """The array module of each available backend, selected for the duration of the test."""
    if request.param == "fake-cupy":
        with fakecupy.installed(), backend.using("cupy") as mod:
            yield mod
        return
    with backend.using(request.param) as mod:
        yield mod


@pytest.fixture
def fake_cupy():
    """The fake device selected as the cupy backend; yields its counters."""
    with fakecupy.installed() as dev, backend.using("cupy"):
        yield dev.counts


@pytest.fixture(params=["jit", "numpy"])
def compiled(request):
    """The CPU kernels' compiled loops (``xpnet.functional.jit``, where Numba is installed) and
    their NumPy passes: each test that takes this fixture runs on both."""
    from xpnet.functional import jit

    if request.param == "jit" and not jit.available():
        pytest.skip("numba is not installed")
    previous = jit.set_enabled(request.param == "jit")
    yield request.param
    jit.set_enabled(previous)


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
    # Started as a background job of a script (`pytest &`, no job control), this process and
    # every run it starts inherit SIGINT ignored, and xpnet rightly leaves an ignored SIGINT
    # alone: the Ctrl-C tests would then see runs that cannot be interrupted. Restore Python's
    # default, so they test xpnet, not how the suite was launched.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # The tests on real data then run from a plain `python -m pytest` as they do under .ci/run.
    if not os.environ.get("XPNET_DATA"):
        found = shared_mnist(Path(__file__).resolve().parents[1])
        if found is not None:
            os.environ["XPNET_DATA"] = str(found)


@pytest.fixture(scope="session")
def mnist_model(tmp_path_factory):
    """The best checkpoint of a small model trained on real MNIST (about 97 % on its test subset):
    width 0.125, two epochs over the first 5,000 training images, tested on the first 500 test
    images. Skips without MNIST in $XPNET_DATA."""
    folder = os.environ.get("XPNET_DATA")
    if not folder or not Path(folder, "train-labels-idx1-ubyte.gz").exists():
        pytest.skip("needs MNIST: set XPNET_DATA")
    from _digits import write_idx_set

    from xpnet.cli import main
    from xpnet.data import MNIST, load_mnist

    d = load_mnist(folder, download=False)
    subset = write_idx_set(tmp_path_factory.mktemp("mnist-subset"), MNIST(
        d.train_images[:5000], d.train_labels[:5000], d.test_images[:500], d.test_labels[:500]))
    out = tmp_path_factory.mktemp("mnist-model")
    argv = ["train", "--data-dir", str(subset), "--out", str(out), "--width", "0.125", "--epochs", "2",
            "--batch-size", "50", "--lr", "0.2", "--no-plots"]
    assert main(argv) == 0
    return out / "best.safetensors"
