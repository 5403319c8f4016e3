"""Tests for xpnet.data.mnist: IDX reading and validation, verification, download, batching.

Unit tests write tiny synthetic IDX sets to tmp_path; downloads are served by a local http.server
on 127.0.0.1. The real-data tests run only when XPNET_DATA points at a folder with the MNIST files.
"""

import functools
import gzip
import hashlib
import http.server
import os
import socket
import struct
import sys
import threading
from pathlib import Path

import numpy
import pytest

from xpnet import backend
from xpnet.data import mnist
from xpnet.data.mnist import DataError

IDX_CODES = {"u1": 0x08, "i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}


def idx_bytes(array, code=None) -> bytes:
    """The IDX encoding of ``array`` (big-endian), with ``code`` overriding its type code."""
    array = numpy.asarray(array)
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    code = IDX_CODES[dtype.str.lstrip("|")] if code is None else code
    head = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + array.astype(dtype).tobytes()


def write_file(path: Path, payload: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def synthetic(n_train=12, n_test=5, h=4, w=6, seed=0):
    rng = numpy.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, size=(n_train, h, w), dtype=numpy.uint8),
        "train_labels": rng.integers(0, 10, size=n_train, dtype=numpy.uint8),
        "test_images": rng.integers(0, 256, size=(n_test, h, w), dtype=numpy.uint8),
        "test_labels": rng.integers(0, 10, size=n_test, dtype=numpy.uint8),
    }


def write_set(folder: Path, arrays: dict, gz: bool = False) -> dict:
    """Write the four files (``name.gz`` when gz) into folder; returns key -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, name in mnist.FILES.items():
        path = folder / (name + ".gz" if gz else name)
        paths[key] = write_file(path, idx_bytes(arrays[key]), gz=gz)
    return paths


def assert_one_line_naming(excinfo, name: str):
    message = str(excinfo.value)
    assert name in message
    assert "\n" not in message


# --- reading -------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_load_round_trips_synthetic_set(tmp_path, gz):
    arrays = synthetic()
    write_set(tmp_path, arrays, gz=gz)
    data = mnist.load_mnist(tmp_path, download=False)
    for key in mnist.FILES:
        numpy.testing.assert_array_equal(getattr(data, key), arrays[key])
    assert data.train_images.dtype == numpy.uint8 and data.test_images.dtype == numpy.uint8
    assert data.train_labels.dtype == numpy.int64 and data.test_labels.dtype == numpy.int64
    assert data.image_shape == (4, 6)
    assert data.train_images.flags.writeable
    assert repr(data) == "MNIST(train=12, test=5, image=4x6)"


def test_raw_file_preferred_over_gz(tmp_path):
    write_set(tmp_path, synthetic(seed=1), gz=True)
    preferred = synthetic(seed=2)
    name = mnist.FILES["train_images"]
    (tmp_path / name).write_bytes(idx_bytes(preferred["train_images"]))
    data = mnist.load_mnist(tmp_path, download=False)
    numpy.testing.assert_array_equal(data.train_images, preferred["train_images"])


def test_gzip_detected_by_magic_bytes_not_name(tmp_path):
    arrays = synthetic()
    paths = write_set(tmp_path, arrays)
    # gzip content under the raw name, raw content under a .gz name: both must read.
    write_file(paths["train_images"], idx_bytes(arrays["train_images"]), gz=True)
    paths["test_labels"].rename(tmp_path / (mnist.FILES["test_labels"] + ".gz"))
    data = mnist.load_mnist(tmp_path, download=False)
    numpy.testing.assert_array_equal(data.train_images, arrays["train_images"])
    numpy.testing.assert_array_equal(data.test_labels, arrays["test_labels"])


@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
def test_read_idx_all_type_codes(tmp_path, dtype):
    expected = (numpy.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    path = write_file(tmp_path / "x.idx", idx_bytes(expected))
    got = mnist.read_idx(path)
    assert got.shape == (2, 3, 4)
    assert got.dtype == expected.dtype.newbyteorder("=")
    numpy.testing.assert_array_equal(got, expected)


def test_non_28x28_images_load(tmp_path):
    write_set(tmp_path, synthetic(h=9, w=3))
    assert mnist.load_mnist(tmp_path, download=False).image_shape == (9, 3)


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XPNET_DATA", str(tmp_path))
    assert mnist.default_data_dir() == tmp_path
    monkeypatch.delenv("XPNET_DATA")
    assert mnist.default_data_dir() == Path("data") / "mnist"


def test_load_uses_default_data_dir(monkeypatch, tmp_path):
    arrays = synthetic()
    write_set(tmp_path, arrays)
    monkeypatch.setenv("XPNET_DATA", str(tmp_path))
    data = mnist.load_mnist(download=False)
    numpy.testing.assert_array_equal(data.test_images, arrays["test_images"])


# --- validation: each fault is one DataError line naming the file --------------------------------

IMAGES = mnist.FILES["train_images"]
LABELS = mnist.FILES["train_labels"]


def _corrupt_cases():
    arrays = synthetic()
    images, labels = arrays["train_images"], arrays["train_labels"]
    good = idx_bytes(images)
    return {
        "bad magic": (IMAGES, b"\x12\x34" + good[2:], "bad magic number"),
        "unknown type code": (IMAGES, good[:2] + b"\x07" + good[3:], "unknown IDX type code"),
        "float images": (IMAGES, idx_bytes(images.astype(">f4")), "expected unsigned bytes"),
        "int32 labels": (LABELS, idx_bytes(labels.astype(">i4")), "expected unsigned bytes"),
        "flat images": (IMAGES, idx_bytes(images.reshape(len(images), -1)), "2-D per item"),
        "4-D images": (IMAGES, idx_bytes(images[:, None]), "2-D per item"),
        "2-D labels": (LABELS, idx_bytes(labels[:, None]), "labels must be 1-D"),
        "zero dims": (LABELS, b"\x00\x00\x08\x00", "0 dimensions"),
        "truncated payload": (IMAGES, good[:-7], "truncated"),
        "trailing bytes": (IMAGES, good + b"\x00\x00\x00", "trailing bytes"),
        "truncated header": (IMAGES, good[:9], "truncated IDX header"),
        "empty file": (IMAGES, b"", "too short"),
        "label out of range": (LABELS, idx_bytes(numpy.r_[labels[:-1], 10].astype("u1")),
                               "label 10 at index 11 is outside 0..9"),
        "count mismatch": (LABELS, idx_bytes(labels[:-1]), "12 images but"),
    }


@pytest.mark.parametrize("case", list(_corrupt_cases()))
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_corrupt_file_gives_one_line_data_error(tmp_path, case, gz):
    name, payload, expected = _corrupt_cases()[case]
    write_set(tmp_path, synthetic())
    (tmp_path / name).unlink()
    bad = write_file(tmp_path / (name + ".gz" if gz else name), payload, gz=gz)
    with pytest.raises(DataError, match=expected) as excinfo:
        mnist.load_mnist(tmp_path, download=False)
    assert_one_line_naming(excinfo, bad.name)


@pytest.mark.parametrize(
    "payload, expected",
    [
        (lambda good: gzip.compress(good)[:-20], "not a valid gzip file"),
        (lambda good: b"\x1f\x8b" + b"garbage that is not deflate data", "not a valid gzip file"),
        (lambda good: b"plain text, no magic at all", "neither gzip data nor an IDX file"),
    ],
    ids=["truncated gzip", "corrupt gzip", "not gzip"],
)
def test_undecodable_gz_gives_one_line_data_error(tmp_path, payload, expected):
    write_set(tmp_path, synthetic(), gz=True)
    bad = tmp_path / (IMAGES + ".gz")
    bad.write_bytes(payload(idx_bytes(synthetic()["train_images"])))
    with pytest.raises(DataError, match=expected) as excinfo:
        mnist.load_mnist(tmp_path, download=False)
    assert_one_line_naming(excinfo, bad.name)


def test_train_and_test_image_sizes_must_agree(tmp_path):
    write_set(tmp_path, synthetic(h=4, w=6))
    path = tmp_path / mnist.FILES["test_images"]
    path.write_bytes(idx_bytes(synthetic(h=5, w=6)["test_images"]))
    with pytest.raises(DataError, match="4x6 but test images are 5x6"):
        mnist.load_mnist(tmp_path, download=False)


def test_missing_files_without_download(tmp_path):
    write_set(tmp_path, synthetic())
    (tmp_path / LABELS).unlink()
    (tmp_path / mnist.FILES["test_images"]).unlink()
    with pytest.raises(DataError) as excinfo:
        mnist.load_mnist(tmp_path, download=False)
    assert_one_line_naming(excinfo, LABELS)
    message = str(excinfo.value)
    assert mnist.FILES["test_images"] in message and IMAGES not in message
    assert "--data-dir" in message and "XPNET_DATA" in message


def test_load_split_reads_only_its_own_files(tmp_path):
    arrays = synthetic()
    write_set(tmp_path, arrays)
    (tmp_path / IMAGES).unlink()
    (tmp_path / LABELS).unlink()
    images, labels = mnist.load_split(tmp_path, "test", download=False)
    numpy.testing.assert_array_equal(images, arrays["test_images"])
    numpy.testing.assert_array_equal(labels, arrays["test_labels"])
    with pytest.raises(DataError) as excinfo:
        mnist.load_split(tmp_path, "train", download=False)
    assert_one_line_naming(excinfo, IMAGES)
    with pytest.raises(ValueError, match="split"):
        mnist.load_split(tmp_path, "validation", download=False)


# --- verification --------------------------------------------------------------------------------


def test_decompressed_sha256_ignores_compression(tmp_path):
    payload = idx_bytes(synthetic()["train_images"])
    raw = write_file(tmp_path / "a", payload)
    gz = write_file(tmp_path / "b.gz", payload, gz=True)
    expected = hashlib.sha256(payload).hexdigest()
    assert mnist.decompressed_sha256(raw) == expected == mnist.decompressed_sha256(gz)


def test_verify_compares_with_canonical_hashes(tmp_path, monkeypatch):
    arrays = synthetic()
    write_set(tmp_path, arrays, gz=True)
    assert mnist.verify(tmp_path) is False
    hashes = {name: hashlib.sha256(idx_bytes(arrays[key])).hexdigest()
              for key, name in mnist.FILES.items()}
    monkeypatch.setattr(mnist, "CANONICAL_SHA256", hashes)
    assert mnist.verify(tmp_path) is True
    reversed_labels = idx_bytes(arrays["train_labels"][::-1])
    (tmp_path / (LABELS + ".gz")).write_bytes(gzip.compress(reversed_labels))
    assert mnist.verify(tmp_path) is False


def test_verify_missing_files(tmp_path):
    with pytest.raises(DataError, match="missing"):
        mnist.verify(tmp_path)


# --- download (local server only: this must never touch the internet) ---------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requested: list

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.requested.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local HTTP server of the synthetic set as .gz under tmp_path/"served"; yields its state."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    arrays = synthetic()
    served = tmp_path / "served"
    paths = write_set(served, arrays, gz=True)
    md5 = {mnist.FILES[k]: hashlib.md5(p.read_bytes()).hexdigest() for k, p in paths.items()}
    requested = []
    handler = type("Handler", (_QuietHandler,), {"requested": requested})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"url": f"http://127.0.0.1:{httpd.server_address[1]}/", "md5": md5,
               "arrays": arrays, "requested": requested}
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def dead_url():
    """An http URL on 127.0.0.1 where nothing listens (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_download_tries_mirrors_in_order(tmp_path, server, dead_url):
    pytest.importorskip("pooch")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # One file already present: only the other three may be fetched.
    (data_dir / LABELS).write_bytes(idx_bytes(server["arrays"]["train_labels"]))
    mirrors = (dead_url, server["url"] + "nowhere/", server["url"])
    data = mnist.load_mnist(
        data_dir, progress=False, mirrors=mirrors, known_md5=server["md5"], timeout=5)
    for key in mnist.FILES:
        numpy.testing.assert_array_equal(getattr(data, key), server["arrays"][key])
    fetched = sorted(p for p in server["requested"] if not p.startswith("/nowhere/"))
    assert fetched == sorted("/" + mnist.FILES[k] + ".gz" for k in
                             ("train_images", "test_images", "test_labels"))
    assert len([p for p in server["requested"] if p.startswith("/nowhere/")]) == 3
    assert sorted(os.listdir(data_dir)) == sorted(
        [LABELS] + [mnist.FILES[k] + ".gz" for k in ("train_images", "test_images", "test_labels")])


def test_unreachable_mirror_gives_one_clear_error(tmp_path, dead_url, server, monkeypatch):
    pooch = pytest.importorskip("pooch")
    urls = []
    retrieve = pooch.retrieve

    def counting_retrieve(url, *args, **kwargs):
        urls.append(url)
        return retrieve(url, *args, **kwargs)

    monkeypatch.setattr(pooch, "retrieve", counting_retrieve)
    data_dir = tmp_path / "data"
    with pytest.raises(DataError) as excinfo:
        # The live server has the files but not the canonical md5s: every file fails everywhere.
        mnist.load_mnist(data_dir, progress=False, mirrors=(dead_url, server["url"]), timeout=5)
    # A mirror refusing connections is asked once, not once per file; a reachable one every time.
    assert sum(url.startswith(dead_url) for url in urls) == 1
    assert sum(url.startswith(server["url"]) for url in urls) == 4
    message = str(excinfo.value)
    assert "\n" not in message
    assert all(name + ".gz" in message for name in mnist.FILES.values())
    assert "--data-dir" in message and "XPNET_DATA" in message and "2 mirror(s)" in message
    # The folder this call created is gone again; it would pass for a data folder otherwise.
    assert not data_dir.exists()


def test_failed_download_keeps_a_folder_that_was_there(tmp_path, dead_url):
    pytest.importorskip("pooch")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with pytest.raises(DataError):
        mnist.load_mnist(data_dir, progress=False, mirrors=(dead_url,), timeout=5)
    assert data_dir.is_dir()


def test_only_mirror_down_names_it(tmp_path, dead_url):
    pytest.importorskip("pooch")
    with pytest.raises(DataError, match="ConnectionError") as excinfo:
        mnist.load_mnist(tmp_path / "data", progress=False, mirrors=(dead_url,), timeout=5)
    assert dead_url in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_md5_mismatch_is_refused(tmp_path, server):
    pytest.importorskip("pooch")
    data_dir = tmp_path / "data"
    # The canonical md5s cannot match the synthetic files.
    with pytest.raises(DataError, match="could not download") as excinfo:
        mnist.load_mnist(data_dir, progress=False, mirrors=(server["url"],), timeout=5)
    assert "hash" in str(excinfo.value).lower()
    assert len(server["requested"]) == 4
    assert not data_dir.exists()


def test_missing_pooch_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pooch", None)
    with pytest.raises(DataError, match="pip install xpnet"):
        mnist.load_mnist(tmp_path, progress=False)


# --- batching ------------------------------------------------------------------------------------


def id_images(n, h=5, w=7):
    """(n, h, w) uint8 images whose pixels encode the sample index (so batches can be traced)."""
    base = numpy.arange(h * w, dtype=numpy.int64).reshape(1, h, w)
    return ((base + 3 * numpy.arange(n)[:, None, None]) % 251 + 1).astype(numpy.uint8)


def reference_normalize(u8):
    return ((u8.astype(numpy.float64) / 255.0 - mnist.MEAN) / mnist.STD)[:, None]


def reference_shift(image, dy, dx):
    h, w = image.shape
    out = numpy.zeros_like(image)
    for i in range(h):
        for j in range(w):
            if 0 <= i - dy < h and 0 <= j - dx < w:
                out[i, j] = image[i - dy, j - dx]
    return out


def test_batches_in_order_without_shuffle():
    images, labels = id_images(10), numpy.arange(10) % 10
    got = list(mnist.batches(images, labels, 4, rng=None, shuffle=False))
    assert [len(y) for _, y in got] == [4, 4, 2]
    for x, y in got:
        assert isinstance(x, numpy.ndarray) and x.dtype == numpy.float32
        assert x.shape[1:] == (1, 5, 7)
        assert y.dtype == numpy.int64 and y.shape == (len(x),)
    x = numpy.concatenate([x for x, _ in got])
    numpy.testing.assert_allclose(x, reference_normalize(images), rtol=1e-6, atol=1e-6)
    numpy.testing.assert_array_equal(numpy.concatenate([y for _, y in got]), labels)


def test_drop_last():
    got = list(mnist.batches(id_images(10), numpy.zeros(10, "u1"), 4, rng=None, shuffle=False,
                             drop_last=True))
    assert [len(y) for _, y in got] == [4, 4]


def test_shuffle_visits_every_sample_once():
    n = 23
    images, ids = id_images(n), numpy.arange(n)
    xs, ys = zip(*mnist.batches(images, ids, 5, numpy.random.default_rng(0)), strict=True)
    seen = numpy.concatenate(ys)
    assert sorted(seen) == list(range(n)) and not numpy.array_equal(seen, ids)
    numpy.testing.assert_allclose(numpy.concatenate(xs), reference_normalize(images[seen]),
                                  rtol=1e-6, atol=1e-6)


def test_rng_drawn_at_call_and_reproducible():
    images, ids = id_images(30), numpy.arange(30)
    rng = numpy.random.default_rng(7)
    it = mnist.batches(images, ids, 8, rng, augment=2)
    state = rng.bit_generator.state
    first = [(x.copy(), y.copy()) for x, y in it]
    # Consuming the batches draws nothing more, so the state saved after the call resumes exactly.
    assert rng.bit_generator.state == state
    again = numpy.random.default_rng(7)
    second = list(mnist.batches(images, ids, 8, again, augment=2))
    assert again.bit_generator.state == state
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        numpy.testing.assert_array_equal(x1, x2)
        numpy.testing.assert_array_equal(y1, y2)
    third = list(mnist.batches(images, ids, 8, rng, augment=2))
    pairs = zip(first, third, strict=True)
    assert not all(numpy.array_equal(y1, y3) for (_, y1), (_, y3) in pairs)


def test_augment_matches_documented_draws_and_reference_shift():
    n, k = 17, 3
    images, ids = id_images(n, h=6, w=8), numpy.arange(n)
    got = list(mnist.batches(images, ids, 6, numpy.random.default_rng(3), augment=k))
    replay = numpy.random.default_rng(3)
    order = replay.permutation(n)
    offsets = replay.integers(-k, k + 1, size=(n, 2))
    assert numpy.abs(offsets).max() <= k and numpy.any(offsets != 0)
    expected = numpy.stack([reference_shift(images[i], *offsets[j]) for j, i in enumerate(order)])
    numpy.testing.assert_array_equal(numpy.concatenate([y for _, y in got]), order)
    numpy.testing.assert_allclose(numpy.concatenate([x for x, _ in got]),
                                  reference_normalize(expected), rtol=1e-6, atol=1e-6)


def test_translate_matches_loop_including_large_shifts():
    rng = numpy.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 5, 6), dtype=numpy.uint8)
    offsets = rng.integers(-7, 8, size=(40, 2))
    got = mnist.translate(images, offsets)
    expected = numpy.stack([reference_shift(im, *o) for im, o in zip(images, offsets, strict=True)])
    assert got.dtype == numpy.uint8
    numpy.testing.assert_array_equal(got, expected)


def test_crop_follows_the_documented_draws_after_the_shifts():
    n, k, c = 19, 1, 4
    images, ids = id_images(n, h=6, w=7), numpy.arange(n)
    got = list(mnist.batches(images, ids, 5, numpy.random.default_rng(5), augment=k, crop=c))
    replay = numpy.random.default_rng(5)
    order = replay.permutation(n)
    offsets = replay.integers(-k, k + 1, size=(n, 2))
    tops, lefts = replay.integers(0, 6 - c + 1, size=n), replay.integers(0, 7 - c + 1, size=n)
    expected = numpy.stack([reference_shift(images[i], *offsets[j])[tops[j]:tops[j] + c, lefts[j]:lefts[j] + c]
                            for j, i in enumerate(order)])
    x = numpy.concatenate([x for x, _ in got])
    assert x.shape == (n, 1, c, c)
    numpy.testing.assert_array_equal(numpy.concatenate([y for _, y in got]), order)
    numpy.testing.assert_allclose(x, reference_normalize(expected), rtol=1e-6, atol=1e-6)


def test_crop_leaves_the_shuffle_and_shifts_as_without_it():
    # The corners are drawn last, so a run's permutation and shifts do not depend on its crop.
    images, ids = id_images(30, h=8, w=8), numpy.arange(30)
    plain = list(mnist.batches(images, ids, 7, numpy.random.default_rng(2), augment=2))
    cropped = list(mnist.batches(images, ids, 7, numpy.random.default_rng(2), augment=2, crop=8))
    for (x1, y1), (x2, y2) in zip(plain, cropped, strict=True):
        numpy.testing.assert_array_equal(y1, y2)
        numpy.testing.assert_array_equal(x1, x2)  # an 8x8 window of 8x8 images is the image


def test_crop_windows_reach_every_position():
    images = numpy.broadcast_to(numpy.arange(5 * 6, dtype=numpy.uint8).reshape(1, 5, 6), (400, 5, 6))
    x = numpy.concatenate([x for x, _ in mnist.batches(images, numpy.zeros(400), 100, numpy.random.default_rng(0),
                                                       shuffle=False, crop=3)])
    # Each window's top-left pixel tells its corner: every one of the 3x4 corners is drawn.
    corners = {divmod(int(v), 6) for v in numpy.rint(x[:, 0, 0, 0] * mnist.STD * 255 + mnist.MEAN * 255)}
    assert corners == {(i, j) for i in range(3) for j in range(4)}


def test_crop_windows_match_slicing():
    rng = numpy.random.default_rng(1)
    images = rng.integers(0, 256, size=(12, 7, 9), dtype=numpy.uint8)
    corners = numpy.stack([rng.integers(0, 3, size=12), rng.integers(0, 5, size=12)], 1)
    got = mnist.crop_windows(images, corners, 5)
    expected = numpy.stack([im[t:t + 5, s:s + 5] for im, (t, s) in zip(images, corners, strict=True)])
    assert got.dtype == numpy.uint8
    numpy.testing.assert_array_equal(got, expected)


def test_center_crop_takes_the_middle_and_rounds_toward_the_top_left():
    images = id_images(3, h=7, w=8)
    numpy.testing.assert_array_equal(mnist.center_crop(images, 4), images[:, 1:5, 2:6])
    numpy.testing.assert_array_equal(mnist.center_crop(images, 5), images[:, 1:6, 1:6])
    assert mnist.center_crop(images, 0) is images
    with pytest.raises(ValueError, match="crop 8"):
        mnist.center_crop(images, 8)


def test_normalize_stays_float32():
    x = mnist.normalize(numpy.full((2, 3, 3), 255, numpy.uint8))
    assert x.dtype == numpy.float32 and x.shape == (2, 1, 3, 3)
    numpy.testing.assert_allclose(x, (1.0 - mnist.MEAN) / mnist.STD, rtol=1e-6)


def test_raw_inputs_keep_the_pixel_values():
    images = id_images(6)
    x = mnist.normalize(images, "raw")
    assert x.dtype == numpy.float32 and x.shape == (6, 1, 5, 7)
    numpy.testing.assert_array_equal(x[:, 0], images.astype(numpy.float32))
    got = numpy.concatenate([x for x, _ in mnist.batches(images, numpy.arange(6), 4, shuffle=False, inputs="raw")])
    numpy.testing.assert_array_equal(got[:, 0], images)
    with pytest.raises(ValueError, match="inputs"):
        mnist.normalize(images, "minmax")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"inputs": "minmax"}, "inputs"),
        ({"batch_size": 0}, "batch_size"),
        ({"augment": -1}, "augment"),
        ({"rng": None}, "rng"),
        ({"rng": None, "shuffle": False, "augment": 1}, "rng"),
        ({"rng": None, "shuffle": False, "crop": 2}, "rng"),
        ({"crop": 6}, "crop"),
        ({"crop": -1}, "crop"),
        ({"labels": numpy.zeros(3)}, "labels"),
    ],
)
def test_batches_argument_errors(kwargs, match):
    args = {"images": id_images(4), "labels": numpy.zeros(4), "batch_size": 2,
            "rng": numpy.random.default_rng(0)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mnist.batches(**args)


@pytest.mark.parametrize("on_device", [True, False], ids=["device arrays", "host arrays"])
def test_batches_run_on_the_current_backend(xp, on_device):
    # xp: conftest's fixture, selecting each available backend in turn.
    n, k = 21, 2
    images, ids = id_images(n), numpy.arange(n)
    source = (xp.asarray(images), xp.asarray(ids)) if on_device else (images, ids)
    got = list(mnist.batches(*source, 8, numpy.random.default_rng(5), augment=k))
    for x, y in got:
        assert backend.get_array_module(x, y) is xp
        assert x.dtype == numpy.float32 and y.dtype == numpy.int64
    replay = numpy.random.default_rng(5)
    order = replay.permutation(n)
    offsets = replay.integers(-k, k + 1, size=(n, 2))
    expected = numpy.stack([reference_shift(images[i], *offsets[j]) for j, i in enumerate(order)])
    numpy.testing.assert_allclose(numpy.concatenate([backend.asnumpy(x) for x, _ in got]),
                                  reference_normalize(expected), rtol=1e-6, atol=1e-6)
    numpy.testing.assert_array_equal(numpy.concatenate([backend.asnumpy(y) for _, y in got]), order)


def test_device_arrays_need_the_device_backend(xp):
    if xp is numpy:
        pytest.skip("needs CuPy and a GPU")
    images = xp.asarray(id_images(4))
    backend.use("numpy")
    with pytest.raises(backend.BackendError, match="current backend is numpy"):
        mnist.batches(images, numpy.zeros(4), 2, rng=None, shuffle=False)


# --- real data (opt-in) --------------------------------------------------------------------------


@pytest.mark.slow
def test_real_mnist_from_xpnet_data():
    folder = os.environ.get("XPNET_DATA")
    if not folder:
        pytest.skip("set XPNET_DATA to a folder with the MNIST IDX files to run this test")
    data = mnist.load_mnist(folder, download=False)
    assert data.train_images.shape == (60000, 28, 28)
    assert data.test_images.shape == (10000, 28, 28)
    assert len(data.train_labels) == 60000 and len(data.test_labels) == 10000
    assert set(numpy.unique(data.train_labels)) == set(range(10))
    assert mnist.verify(folder) is True


@pytest.mark.slow
def test_fashion_mnist_loads_but_is_not_canonical():
    # Debian's dataset-fashion-mnist package: a second real IDX set under the same names.
    folder = Path("/usr/share/datasets/fashion-mnist")
    if mnist.missing_files(folder):
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    data = mnist.load_mnist(folder, download=False)
    assert len(data.train_labels) == 60000 and len(data.test_labels) == 10000
    assert data.image_shape == (28, 28)
    assert numpy.array_equal(numpy.bincount(data.test_labels), numpy.full(10, 1000))
    assert mnist.verify(folder) is False
