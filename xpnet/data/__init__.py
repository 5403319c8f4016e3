"""Datasets: MNIST (and any IDX set laid out like it), read from disk or downloaded, and batched;
which folder a command reads (``folder.DataFolder``)."""

from xpnet.data.folder import DataFolder

from xpnet.data.mnist import (
    INPUTS,
    MEAN,
    MNIST,
    STD,
    DataError,
    batches,
    center_crop,
    crop_windows,
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
    "DataFolder",
    "INPUTS",
    "MEAN",
    "MNIST",
    "STD",
    "DataError",
    "batches",
    "center_crop",
    "crop_windows",
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
