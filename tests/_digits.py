"""Tiny synthetic digit sets for the tests that train: learnable in a few steps, made in memory
(an ``xpnet.data.MNIST``) or written as a gzipped IDX folder that ``--data-dir`` reads."""

from __future__ import annotations

import gzip
import struct

import numpy

from xpnet.data import MNIST


def bar_digits(rng, n, noise=40, bars=True):
    """-> images (n, 28, 28) uint8, labels (n,) int64: noise in [0, noise), and with ``bars``
    class k drawn as a bright bar at row 2k+4."""
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, noise, (n, 28, 28))
    if bars:
        for i, k in enumerate(labels):
            images[i, 2 * k + 4, 4:24] = 255
    return images.astype(numpy.uint8), labels.astype(numpy.int64)


def digit_set(n_train, n_test, noise=40, seed=0) -> MNIST:
    rng = numpy.random.default_rng(seed)
    return MNIST(*bar_digits(rng, n_train, noise), *bar_digits(rng, n_test, noise))


def write_idx(path, array) -> None:
    """One gzipped IDX file of unsigned bytes (array: any integer dtype, values 0-255)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(numpy.uint8).tobytes())


def write_idx_set(folder, data: MNIST):
    """The four standard MNIST files of ``data`` in ``folder`` (created) -> folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, images, labels in (("train", data.train_images, data.train_labels),
                                   ("t10k", data.test_images, data.test_labels)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def digit_folder(folder, n_train, n_test, noise=30, seed=0, bars=True):
    """A synthetic IDX set in ``folder`` -> folder."""
    rng = numpy.random.default_rng(seed)
    train = bar_digits(rng, n_train, noise, bars)
    test = bar_digits(rng, n_test, noise, bars)
    return write_idx_set(folder, MNIST(*train, *test))


# A run small enough for a test: a sixteenth of the width, batches of 32 (the loop and runner tests).
TINY = dict(width=1 / 16, batch_size=32, lr=0.05, augment=1, eval_batch_size=50)
