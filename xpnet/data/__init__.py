"""Datasets: MNIST (and any IDX set laid out like it), read from disk or downloaded, and batched."""

from xpnet.data.mnist import (
    INPUTS,
    MEAN,
    MNIST,
    STD,
    DataError,
    batches,
    decompressed_sha256,
    default_data_dir,
    fetch,
    load_mnist,
    load_split,
    normalize,
    read_idx,
    translate,
    verify,
)

__all__ = [
    "INPUTS",
    "MEAN",
    "MNIST",
    "STD",
    "DataError",
    "batches",
    "decompressed_sha256",
    "default_data_dir",
    "fetch",
    "load_mnist",
    "load_split",
    "normalize",
    "read_idx",
    "translate",
    "verify",
]
