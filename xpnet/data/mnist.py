"""MNIST in IDX format: reading, verification, download and batching.

The four standard files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``) are read from one folder, each either raw or
gzip-compressed (``.gz``). Any well-formed IDX set under these names loads (Fashion-MNIST, say);
``verify`` tells whether it is the canonical MNIST.

    data = load_mnist(default_data_dir())           # MNIST with uint8 images (N, H, W)
    images = backend.to_device(data.train_images)   # once, before training
    for x, y in batches(images, data.train_labels, 128, rng, augment=2):
        ...                                         # x: (B, 1, H, W) float32, y: (B,) int64

All randomness (the shuffle and the augmentation offsets) comes from a host
``numpy.random.Generator``, so a seed and ``rng.bit_generator.state`` reproduce a run on either
backend.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import math
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy

from xpnet import backend
from xpnet.errors import XpnetError
from xpnet.errors import one_line as _one_line

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# Mean and standard deviation of the MNIST training pixels scaled to [0, 1] (the usual constants).
MEAN = 0.1307
STD = 0.3081
# How pixels reach the network: standardised (MEAN, STD) or raw 0-255 values.
INPUTS = ("standard", "raw")

NUM_CLASSES = 10

# sha256 of the decompressed canonical files: the .gz bytes differ between mirrors and
# recompressions, the IDX contents do not.
CANONICAL_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

# md5 of the .gz files exactly as the mirrors serve them.
CANONICAL_GZ_MD5 = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}

# Tried in order; the original site comes last because it is slow and often refuses requests.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

_GZIP_MAGIC = b"\x1f\x8b"

# IDX type codes; multi-byte values are big-endian on disk.
_IDX_DTYPES = {
    0x08: numpy.dtype("u1"),
    0x09: numpy.dtype("i1"),
    0x0B: numpy.dtype(">i2"),
    0x0C: numpy.dtype(">i4"),
    0x0D: numpy.dtype(">f4"),
    0x0E: numpy.dtype(">f8"),
}

_HELP = "pass --data-dir or set XPNET_DATA to a folder that holds the four MNIST IDX files"


class DataError(XpnetError, ValueError):
    """A data file is missing, malformed or could not be downloaded (one-line message naming it)."""


@dataclasses.dataclass(frozen=True, eq=False)
class MNIST:
    """The four MNIST arrays, on the host.

    train_images: (N, H, W) uint8      train_labels: (N,) int64 in 0..9
    test_images:  (M, H, W) uint8      test_labels:  (M,) int64 in 0..9
    """

    train_images: numpy.ndarray = dataclasses.field(repr=False)
    train_labels: numpy.ndarray = dataclasses.field(repr=False)
    test_images: numpy.ndarray = dataclasses.field(repr=False)
    test_labels: numpy.ndarray = dataclasses.field(repr=False)

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of one image."""
        return tuple(int(d) for d in self.train_images.shape[1:])

    def __repr__(self) -> str:
        h, w = self.image_shape
        return f"MNIST(train={len(self.train_labels)}, test={len(self.test_labels)}, image={h}x{w})"


def default_data_dir() -> Path:
    """``$XPNET_DATA`` if set and non-empty, else ``data/mnist`` under the working directory."""
    return Path(os.environ.get("XPNET_DATA") or os.path.join("data", "mnist"))


def find_file(data_dir, name: str) -> Path | None:
    """Path of IDX file ``name`` in ``data_dir``: ``name`` if present, else ``name.gz``, or None.

    Raises DataError when a candidate exists but is not a regular file (a directory, a FIFO, a
    device, a broken or looping symbolic link): reading it would block, fail or never end, and
    calling it "missing" would send the user looking in the wrong place.
    """
    for candidate in (Path(data_dir) / name, Path(data_dir) / (name + ".gz")):
        kind = _file_kind(candidate)
        if kind == "file":
            return candidate
        if kind is not None:
            raise DataError(f"{candidate}: {kind}, not an IDX file")
    return None


def _file_kind(path: Path) -> str | None:
    """"file" for a regular file (through symbolic links), None when nothing is there, else what
    is there instead, as a phrase."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else None
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if stat.S_ISREG(st.st_mode):
        return "file"
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    if stat.S_ISFIFO(st.st_mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return "a device"
    if stat.S_ISSOCK(st.st_mode):
        return "a socket"
    return "not a regular file"


def missing_files(data_dir) -> list[str]:
    """Names (without ``.gz``) of the four standard files found in neither form in ``data_dir``."""
    return [name for name in FILES.values() if find_file(data_dir, name) is None]


# deflate's best case: about 1032 bytes out per byte in (a long run of one byte). A gzip file
# whose header claims more than that could only be truncated, and is refused before inflating.
_MAX_GZIP_RATIO = 1032


def read_idx(path) -> numpy.ndarray:
    """Read one IDX file (raw or gzip) into a native-endian array of the shape its header gives.

    The payload is streamed against the header's size, so memory stays at that size whatever the
    file holds: a raw file's size is checked before its data is read, and gzip data is inflated
    only up to the declared size plus one byte (a decompression bomb is stopped there). Raises
    DataError for a bad magic number, an unknown type code, zero dimensions, a payload whose size
    does not match the header (truncated or trailing bytes), undecodable gzip data, a file that
    cannot be read, or a size that does not fit in memory.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            is_gzip = f.read(2) == _GZIP_MAGIC
            f.seek(0)
            size = os.fstat(f.fileno()).st_size
            if not is_gzip:
                return _read_stream(path, f, size, None)
            with gzip.GzipFile(fileobj=f, mode="rb") as g:
                return _read_stream(path, g, None, size)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: not a valid gzip file ({_one_line(e)})") from None
    except MemoryError:
        raise DataError(f"{path}: its data does not fit in the memory available") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or _one_line(e)})") from None


def _read_exactly(f, n: int) -> bytes:
    """Up to ``n`` bytes of ``f``: fewer only at the end of the stream."""
    parts, got = [], 0
    while got < n:
        part = f.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _read_stream(path: Path, f, raw_size: int | None, gzip_size: int | None) -> numpy.ndarray:
    """The IDX array in stream ``f``; ``raw_size``: the file's size when ``f`` is the raw file,
    ``gzip_size``: the compressed size when ``f`` inflates a gzip file."""
    head = _read_exactly(f, 4)
    if len(head) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(head)} bytes)")
    if head[0] != 0 or head[1] != 0:
        what = "neither gzip data nor an IDX file" if path.suffix == ".gz" else "not an IDX file"
        raise DataError(f"{path}: {what} (bad magic number 0x{head.hex()})")
    code, ndim = head[2], head[3]
    if code not in _IDX_DTYPES:
        raise DataError(f"{path}: unknown IDX type code 0x{code:02x} in the magic number")
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions")
    dims_raw = _read_exactly(f, 4 * ndim)
    start = 4 + len(dims_raw)
    if len(dims_raw) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header ({start} bytes for {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", dims_raw)
    dtype = _IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    if raw_size is not None:
        found = raw_size - start
        # Checked before anything is read: a sparse file of gigabytes costs nothing to refuse.
        _check_size(path, dims, expected, found)
    elif expected > _MAX_GZIP_RATIO * gzip_size:
        raise DataError(
            f"{path}: truncated: header says {_shape_str(dims)} ({expected} bytes of data) but "
            f"{gzip_size} bytes of gzip cannot hold that much"
        )
    data = bytearray(expected)
    view, got = memoryview(data), 0
    while got < expected:
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    if raw_size is None:
        # One byte past the declared size tells trailing data from an exact fit; inflating stops
        # there, however much more the stream would give.
        extra = len(f.read(1)) if got == expected else 0
        _check_size(path, dims, expected, got + extra, exact=not extra)
    elif got < expected:  # the file shrank while it was read
        _check_size(path, dims, expected, got)
    array = numpy.frombuffer(data, dtype=dtype).reshape(dims)
    # The bytearray is writable; multi-byte types are converted to native order once.
    return array if dtype.itemsize == 1 else array.astype(dtype.newbyteorder("="))


def _check_size(path, dims, expected: int, found: int, exact: bool = True) -> None:
    if found < expected:
        raise DataError(
            f"{path}: truncated: header says {_shape_str(dims)} ({expected} bytes of data) "
            f"but only {found} bytes follow"
        )
    if found > expected:
        # Inflating stops one byte past the declared size, so a gzip file's excess is not counted.
        count = f"{found - expected} " if exact else ""
        raise DataError(
            f"{path}: {count}trailing bytes after the {_shape_str(dims)} data the header declares"
        )


def _shape_str(dims) -> str:
    return "x".join(str(d) for d in dims)


def _read_checked(path: Path, kind: str) -> numpy.ndarray:
    """Read an MNIST images (``kind="images"``, (N, H, W)) or labels ((N,)) file as uint8."""
    array = read_idx(path)
    if array.dtype != numpy.uint8:
        raise DataError(
            f"{path}: IDX type is {array.dtype.name}, expected unsigned bytes (type code 0x08)"
        )
    if kind == "images" and array.ndim != 3:
        raise DataError(
            f"{path}: images must be 2-D per item, (N, H, W), but the IDX header gives "
            f"{array.ndim} dimensions ({_shape_str(array.shape)})"
        )
    if kind == "images" and array.ndim == 3 and 0 in array.shape[1:]:
        raise DataError(f"{path}: the IDX header gives images of {_shape_str(array.shape[1:])} pixels")
    if kind == "labels" and array.ndim != 1:
        raise DataError(
            f"{path}: labels must be 1-D, (N,), but the IDX header gives {array.ndim} dimensions "
            f"({_shape_str(array.shape)})"
        )
    return array


def _read_split(data_dir, images_name: str, labels_name: str):
    """(images (N, H, W) uint8, labels (N,) int64) of one split, checked against each other."""
    images_path = find_file(data_dir, images_name)
    labels_path = find_file(data_dir, labels_name)
    images = _read_checked(images_path, "images")
    labels = _read_checked(labels_path, "labels")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels"
        )
    if len(images) == 0:
        raise DataError(f"{images_path}: holds no images; an empty set can be neither trained nor tested on")
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        bad = int(numpy.argmax(labels >= NUM_CLASSES))
        raise DataError(
            f"{labels_path}: label {int(labels[bad])} at index {bad} is outside "
            f"0..{NUM_CLASSES - 1}"
        )
    return images, labels.astype(numpy.int64)


SPLITS = {"train": ("train_images", "train_labels"), "test": ("test_images", "test_labels")}


def _ensure(data_dir: Path, names, download, **fetch_args) -> None:
    """Download those of ``names`` missing from ``data_dir`` (when ``download``), or name them."""
    missing = [name for name in missing_files(data_dir) if name in names]
    if missing and download:
        fetch(data_dir, missing, **fetch_args)
    elif missing:
        raise DataError(f"missing {', '.join(missing)} (or .gz) in {data_dir}; {_HELP}")


def load_split(
    data_dir=None,
    split: str = "test",
    download: bool = True,
    progress: bool = True,
    *,
    mirrors=MIRRORS,
    known_md5: dict[str, str] | None = None,
    timeout: float = 30.0,
):
    """One split, ``"train"`` or ``"test"``, of the set in ``data_dir``: only its two files are
    read (and downloaded if missing), so evaluation needs no training files.

    Returns (images (N, H, W) uint8, labels (N,) int64).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    data_dir = Path(default_data_dir() if data_dir is None else data_dir)
    images, labels = (FILES[k] for k in SPLITS[split])
    _ensure(data_dir, (images, labels), download, mirrors=mirrors, known_md5=known_md5,
            progress=progress, timeout=timeout)
    return _read_split(data_dir, images, labels)


def load_mnist(
    data_dir=None,
    download: bool = True,
    progress: bool = True,
    *,
    mirrors=MIRRORS,
    known_md5: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> MNIST:
    """Load the four IDX files from ``data_dir`` (default: ``default_data_dir()``) into host arrays.

    Missing files are downloaded first when ``download`` is true (see ``fetch``; ``mirrors``,
    ``known_md5`` and ``timeout`` are passed on to it); otherwise a DataError names them.

    Returns MNIST with train_images (N, H, W) uint8, train_labels (N,) int64, test_images
    (M, H, W) uint8, test_labels (M,) int64.
    """
    data_dir = Path(default_data_dir() if data_dir is None else data_dir)
    _ensure(data_dir, list(FILES.values()), download, mirrors=mirrors, known_md5=known_md5,
            progress=progress, timeout=timeout)
    train_images, train_labels = _read_split(data_dir, FILES["train_images"], FILES["train_labels"])
    test_images, test_labels = _read_split(data_dir, FILES["test_images"], FILES["test_labels"])
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(
            f"{data_dir}: training images are {_shape_str(train_images.shape[1:])} but test images "
            f"are {_shape_str(test_images.shape[1:])}"
        )
    return MNIST(train_images, train_labels, test_images, test_labels)


def fetch(
    data_dir,
    names=None,
    *,
    mirrors=MIRRORS,
    known_md5: dict[str, str] | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> list[Path]:
    """Download ``names`` (default: all four, without ``.gz``) as ``name.gz`` into ``data_dir``.

    Each file is tried on every mirror in order (with ``timeout`` seconds per request) and accepted
    only when its md5 matches ``known_md5[name]`` (default: the canonical MNIST .gz md5s). Needs
    pooch, a dependency of xpnet. Returns the paths written; raises one DataError naming every
    file that no mirror could supply, and then removes ``data_dir`` again if this call created it
    and it is still empty.
    """
    try:
        import pooch
        import requests  # a dependency of pooch
    except ImportError:
        raise DataError(
            f"downloading MNIST needs pooch, a dependency of xpnet (pip install xpnet), or {_HELP}"
        ) from None
    data_dir = Path(data_dir)
    created = not data_dir.exists()
    names = list(FILES.values()) if names is None else list(names)
    known_md5 = CANONICAL_GZ_MD5 if known_md5 is None else known_md5
    # pooch draws its progress bar with tqdm and refuses progressbar=True without it.
    progress = progress and importlib.util.find_spec("tqdm") is not None
    downloader = pooch.HTTPDownloader(progressbar=progress, timeout=timeout)
    written, failed, last_error, unreachable = [], [], None, set()
    for name in names:
        known_hash = f"md5:{known_md5[name]}"
        for mirror in mirrors:
            if mirror in unreachable:
                continue
            url = mirror.rstrip("/") + "/" + name + ".gz"
            try:
                written.append(Path(pooch.retrieve(
                    url, known_hash=known_hash, fname=name + ".gz",
                    path=data_dir, downloader=downloader, progressbar=progress,
                )))
                break
            # requests' errors, pooch's hash mismatch (ValueError), an unwritable folder (OSError):
            # any of them means "try the next mirror".
            except Exception as e:
                last_error = f"{url}: {type(e).__name__}: {_one_line(e)}"
                # Without a network every request would wait out its timeout; ask a mirror that
                # could not be reached once no more.
                if isinstance(e, (requests.ConnectionError, requests.Timeout)):
                    unreachable.add(mirror)
        else:
            failed.append(name + ".gz")
    if failed:
        if created:
            _remove_if_empty(data_dir)
        raise DataError(
            f"could not download {', '.join(failed)} into {data_dir} from {len(mirrors)} mirror(s) "
            f"(last error: {last_error}); {_HELP}"
        )
    return written


def _remove_if_empty(folder: Path) -> None:
    # A failed download should not leave an empty folder behind that looks like a data folder.
    try:
        folder.rmdir()
    except OSError:
        pass


def decompressed_sha256(path) -> str:
    """Hex sha256 of the contents of ``path``, after gunzip when it is gzip data."""
    path = Path(path)
    with open(path, "rb") as f:
        is_gzip = f.read(2) == _GZIP_MAGIC
    digest = hashlib.sha256()
    opener = gzip.open if is_gzip else open
    try:
        with opener(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a valid gzip file ({e})") from None
    return digest.hexdigest()


def verify(data_dir) -> bool:
    """True when the four files in ``data_dir`` are, once decompressed, the canonical MNIST.

    False for any other IDX set (Fashion-MNIST, a subset, a corrupted copy); DataError when files
    are missing.
    """
    missing = missing_files(data_dir)
    if missing:
        raise DataError(f"missing {', '.join(missing)} (or .gz) in {data_dir}; {_HELP}")
    return all(
        decompressed_sha256(find_file(data_dir, name)) == CANONICAL_SHA256[name]
        for name in FILES.values()
    )


def normalize(images, inputs: str = "standard"):
    """uint8 images (N, H, W) -> float32 (N, 1, H, W): standardised with MNIST's MEAN and STD
    (``inputs="standard"``), or the pixel values 0-255 as they are (``"raw"``, as the second
    report trained).

    Runs on the array module of ``images``.
    """
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {', '.join(INPUTS)}, got {inputs!r}")
    xp = backend.get_array_module(images)
    x = images.astype(xp.float32)
    if inputs == "raw":
        return x[:, None]
    # Python float scalars keep the arithmetic in float32 under NumPy 2 and CuPy promotion rules.
    x *= 1.0 / (255.0 * STD)
    x -= MEAN / STD
    return x[:, None]


def translate(images, offsets):
    """Shift each image by its own (dy, dx), filling the uncovered border with zeros.

    images: (B, H, W), offsets: (B, 2) integers on the same backend; out[b, i, j] =
    images[b, i - dy[b], j - dx[b]] where that index lies inside the image, else 0.
    Returns (B, H, W) of images' dtype. One gather, no per-sample loop.
    """
    xp = backend.get_array_module(images, offsets)
    b, h, w = images.shape
    rows = xp.arange(h)[None, :] - offsets[:, 0:1]  # (B, H)
    cols = xp.arange(w)[None, :] - offsets[:, 1:2]  # (B, W)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    gathered = images[
        xp.arange(b)[:, None, None],
        xp.clip(rows, 0, h - 1)[:, :, None],
        xp.clip(cols, 0, w - 1)[:, None, :],
    ]
    return xp.where(inside, gathered, xp.zeros((), dtype=images.dtype))


def crop_windows(images, corners, size: int):
    """The ``size`` x ``size`` window of each image whose top-left pixel is its own corner.

    images: (B, H, W), corners: (B, 2) integers on the same backend with
    0 <= corner <= (H - size, W - size); out[b, i, j] = images[b, top[b] + i, left[b] + j].
    Returns (B, size, size) of images' dtype. One gather, no per-sample loop.
    """
    xp = backend.get_array_module(images, corners)
    span = xp.arange(size)
    rows = corners[:, 0:1] + span[None, :]  # (B, size)
    cols = corners[:, 1:2] + span[None, :]
    return images[xp.arange(len(images))[:, None, None], rows[:, :, None], cols[:, None, :]]


def center_crop(images, size: int):
    """The central ``size`` x ``size`` window of every image (a view): images (N, H, W) ->
    (N, size, size), or the images themselves for ``size`` 0. Where H - size is odd the window
    sits half a pixel nearer the top (and left), as torchvision's CenterCrop rounds."""
    if not size:
        return images
    h, w = images.shape[1:]
    if not 0 < size <= min(h, w):
        raise ValueError(f"crop {size} does not fit in {h}x{w} images")
    top, left = (h - size) // 2, (w - size) // 2
    return images[:, top:top + size, left:left + size]


def batches(images, labels, batch_size: int, rng=None, shuffle: bool = True, augment: int = 0,
            drop_last: bool = False, inputs: str = "standard", crop: int = 0):
    """Minibatches ``(x, y)`` on the current backend: x (B, 1, H, W) float32, y (B,) int64.

    images: (N, H, W) uint8 and labels: (N,), host or current-backend arrays (put the images on
    the device once, with ``backend.to_device``, rather than once per batch). x is normalised with
    MNIST's MEAN and STD (``inputs="raw"``: left as 0-255 values); ``augment=k`` shifts each image
    by a random (dy, dx) in [-k, k]^2 with zero fill; ``crop=c`` then takes a random c x c window
    of each (every position equally likely), so x is (B, 1, c, c). The last batch is smaller unless
    ``drop_last``.

    ``rng`` (a host numpy.random.Generator; only needed for ``shuffle``, ``augment`` or ``crop``)
    is drawn from here, when batches() is called, not while iterating: the permutation of all N
    items, then the (N, 2) offsets, then the (N, 2) window corners. So the generator's state after
    the call does not depend on how many batches the caller consumes, and
    ``rng.bit_generator.state`` saved at an epoch boundary resumes exactly.
    """
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not (isinstance(augment, int) and augment >= 0):
        raise ValueError(f"augment must be a non-negative integer, got {augment!r}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if images.ndim != 3:
        raise ValueError(f"images must be (N, H, W), got shape {tuple(images.shape)}")
    if not (isinstance(crop, int) and 0 <= crop <= min(images.shape[1:])):
        raise ValueError(f"crop must be an integer in 0..{min(images.shape[1:])}, got {crop!r}")
    if (shuffle or augment or crop) and rng is None:
        raise ValueError("shuffle, augment and crop need a numpy.random.Generator rng")
    on_device = backend.is_cupy_array(images) or backend.is_cupy_array(labels)
    if on_device and backend.name() != "cupy":
        raise backend.BackendError(
            "images or labels are CuPy arrays but the current backend is numpy; pass host arrays "
            "or select the cupy backend with xpnet.backend.use('cupy')"
        )
    n = len(images)
    order = rng.permutation(n) if shuffle else numpy.arange(n)
    offsets = rng.integers(-augment, augment + 1, size=(n, 2)) if augment else None
    corners = None
    if crop:
        h, w = images.shape[1:]
        corners = numpy.stack([rng.integers(0, h - crop + 1, size=n), rng.integers(0, w - crop + 1, size=n)], 1)
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {', '.join(INPUTS)}, got {inputs!r}")
    return _iterate(images, labels, order, offsets, corners, crop, batch_size, drop_last, inputs)


def _iterate(images, labels, order, offsets, corners, crop, batch_size, drop_last, inputs):
    # The permutation, offsets and corners cross to the device once per epoch, not once per batch.
    order_dev = backend.to_device(order)
    offsets_dev = None if offsets is None else backend.to_device(offsets)
    corners_dev = None if corners is None else backend.to_device(corners)
    n = len(order)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        x = backend.to_device(_take(images, order, order_dev, start, batch_size))
        if offsets_dev is not None:
            x = translate(x, offsets_dev[start:start + batch_size])
        if corners_dev is not None:
            x = crop_windows(x, corners_dev[start:start + batch_size], crop)
        y = backend.to_device(_take(labels, order, order_dev, start, batch_size), dtype="int64")
        yield normalize(x, inputs), y


def _take(a, order, order_dev, start, size):
    """Rows of ``a`` at order[start:start+size], indexed with the index array on a's own backend."""
    index = order_dev if backend.is_cupy_array(a) else order
    return a[index[start:start + size]]
