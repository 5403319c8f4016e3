"""Tests for xpnet.checkpoint: safetensors round trips, atomic writes, refusal without pickle."""

import io
import json
import os
import pickle
import struct
import subprocess
import zipfile

import numpy
import pytest

from xpnet import checkpoint
from xpnet.checkpoint import CheckpointError


class Tripwire:
    """Unpickling this creates ``path``: proof that a loader ran pickle."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def sample_arrays():
    rng = numpy.random.default_rng(0)
    return {
        "conv1.weight": rng.standard_normal((4, 1, 3, 3)).astype(numpy.float32),
        "bn1.running_var": rng.random(4),
        "bn1.num_batches_tracked": numpy.asarray(7, dtype=numpy.int64),
        "head.idx": numpy.arange(-3, 3, dtype=numpy.int32),
        "mask": numpy.array([[True, False], [False, True]]),
        "pixels": numpy.arange(10, dtype=numpy.uint8),
        "half": numpy.array([0.5, -2.0], dtype=numpy.float16),
        "bytes": numpy.array([-128, 127], dtype=numpy.int8),
        "u16": numpy.array([1, 65535], dtype=numpy.uint16),
        "empty": numpy.zeros((0, 3), dtype=numpy.float32),
        "transposed": numpy.arange(12, dtype=numpy.float64).reshape(3, 4).T,
        "big_endian": numpy.arange(5, dtype=">i8"),
    }


def sample_meta():
    rng = numpy.random.default_rng(123)
    rng.random(5)
    return {
        "epoch": 3,
        "config": {"width": 64, "shortcut": "conv", "lr": 0.1, "milestones": [10, 20]},
        "rng": rng.bit_generator.state,
        "schedule": {"step": 1407, "last_lr": 0.025},
        "note": "ünïcode ok",
        "nan_loss": None,
    }


def saved(tmp_path, name="ckpt.safetensors"):
    path = tmp_path / name
    checkpoint.save(path, sample_arrays(), sample_meta())
    return path


def assert_refused(path, *fragments):
    with pytest.raises(CheckpointError) as excinfo:
        checkpoint.load(path)
    message = str(excinfo.value)
    assert str(path) in message and "\n" not in message
    reason = message.replace(str(path), "")  # the folder's name holds the test's name
    for fragment in fragments:
        assert fragment in reason
    return message


# --- round trip ----------------------------------------------------------------------------------


def test_round_trip_arrays_and_meta(tmp_path):
    arrays, meta = checkpoint.load(saved(tmp_path))
    expected = sample_arrays()
    assert sorted(arrays) == sorted(expected)
    for name, a in expected.items():
        assert arrays[name].dtype == a.dtype.newbyteorder("=")
        assert arrays[name].shape == a.shape
        numpy.testing.assert_array_equal(arrays[name], a)
        assert arrays[name].flags.writeable
    assert meta == sample_meta()


def test_rng_state_resumes_the_stream(tmp_path):
    rng = numpy.random.default_rng(42)
    rng.random(10)
    checkpoint.save(tmp_path / "r.safetensors", {}, {"rng": rng.bit_generator.state})
    _, meta = checkpoint.load(tmp_path / "r.safetensors")
    resumed = numpy.random.default_rng()
    resumed.bit_generator.state = meta["rng"]
    numpy.testing.assert_array_equal(resumed.random(5), rng.random(5))


def test_file_follows_the_safetensors_layout(tmp_path):
    raw = saved(tmp_path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0
    header = json.loads(raw[8:8 + n])
    assert json.loads(header["__metadata__"]["xpnet"]) == sample_meta()
    entry = header["conv1.weight"]
    assert entry["dtype"] == "F32" and entry["shape"] == [4, 1, 3, 3]
    begin, end = entry["data_offsets"]
    data = raw[8 + n:]
    stored = numpy.frombuffer(data[begin:end], "<f4").reshape(4, 1, 3, 3)
    numpy.testing.assert_array_equal(stored, sample_arrays()["conv1.weight"])
    tensors = {k: e for k, e in header.items() if k != "__metadata__"}
    assert sorted(tensors) == sorted(sample_arrays())
    assert max(e["data_offsets"][1] for e in tensors.values()) == len(data)
    for name, e in tensors.items():
        assert e["data_offsets"][0] % sample_arrays()[name].dtype.itemsize == 0, name


def legacy_bytes(arrays, meta):
    """A file as xpnet's hand-written encoder (before the safetensors package) wrote it: the header
    in the caller's order, the data widest dtype first, the header padded with spaces to 8 bytes."""
    header, blobs, offset = {}, [], 0
    for name in sorted(arrays, key=lambda k: -arrays[k].dtype.itemsize):
        a = numpy.ascontiguousarray(arrays[name], dtype=arrays[name].dtype.newbyteorder("<"))
        blobs.append(a.tobytes())
        header[name] = (a, [offset, offset + a.nbytes])
        offset += a.nbytes
    codes = {"f4": "F32", "f8": "F64", "f2": "F16", "i8": "I64", "i4": "I32", "i1": "I8",
             "u1": "U8", "u2": "U16", "b1": "BOOL"}
    entries = {}
    for name, a in arrays.items():
        stored, offsets = header[name]
        code = codes[f"{stored.dtype.kind}{stored.dtype.itemsize}"]
        entries[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": offsets}
    entries["__metadata__"] = {"xpnet": json.dumps(meta)}
    blob = json.dumps(entries, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + b"".join(blobs)


def test_files_of_the_earlier_hand_written_encoder_still_load(tmp_path):
    path = tmp_path / "old.safetensors"
    path.write_bytes(legacy_bytes(sample_arrays(), sample_meta()))
    arrays, meta = checkpoint.load(path)
    assert meta == sample_meta()
    # The header's order, which the old encoder kept as the caller gave it.
    assert list(arrays) == list(sample_arrays())
    for name, a in sample_arrays().items():
        assert arrays[name].shape == a.shape and arrays[name].flags.writeable
        numpy.testing.assert_array_equal(arrays[name], a, err_msg=name)


def test_missing_safetensors_package_is_one_line(tmp_path, monkeypatch):
    import builtins

    path = saved(tmp_path)
    real_import = builtins.__import__

    def no_safetensors(name, *args, **kwargs):
        if name.startswith("safetensors"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_safetensors)
    assert_refused(path, "pip install xpnet")
    with pytest.raises(CheckpointError, match="needs the safetensors package"):
        checkpoint.save(tmp_path / "n.safetensors", {"w": numpy.ones(2)}, {})
    assert sorted(os.listdir(tmp_path)) == [path.name]


def test_reference_safetensors_reader_agrees(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open

    path = saved(tmp_path)
    theirs = st.load_file(str(path))
    for name, a in sample_arrays().items():
        numpy.testing.assert_array_equal(theirs[name], a)
    with safe_open(str(path), "np") as f:
        assert json.loads(f.metadata()["xpnet"]) == sample_meta()


def test_foreign_safetensors_without_xpnet_meta_loads(tmp_path):
    path = tmp_path / "other.safetensors"
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + numpy.array([1, 2], "<f4").tobytes())
    arrays, meta = checkpoint.load(path)
    assert meta == {}
    numpy.testing.assert_array_equal(arrays["w"], [1.0, 2.0])


def test_header_length_starting_with_pickle_opcode_still_loads(tmp_path):
    # A header of 128 + 256k bytes begins with 0x80, the pickle PROTO opcode.
    path = tmp_path / "x.safetensors"
    for pad in range(300):
        checkpoint.save(path, {"w": numpy.ones(3, numpy.float32)}, {"pad": "p" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length starting with 0x80")
    arrays, meta = checkpoint.load(path)
    numpy.testing.assert_array_equal(arrays["w"], numpy.ones(3))


def test_overwrite_replaces_previous(tmp_path):
    path = saved(tmp_path)
    checkpoint.save(path, {"only": numpy.zeros(2)}, {"epoch": 9})
    arrays, meta = checkpoint.load(path)
    assert list(arrays) == ["only"] and meta == {"epoch": 9}


def test_save_accepts_arrays_of_every_backend(tmp_path, xp):
    # xp: conftest's fixture, selecting each available backend in turn.
    w = xp.arange(6, dtype=xp.float32).reshape(2, 3)
    checkpoint.save(tmp_path / "g.safetensors", {"w": w, "n": xp.asarray(3)}, {})
    arrays, _ = checkpoint.load(tmp_path / "g.safetensors")
    assert type(arrays["w"]) is numpy.ndarray
    numpy.testing.assert_array_equal(arrays["w"], numpy.arange(6).reshape(2, 3))
    assert arrays["n"].shape == () and arrays["n"] == 3


# --- atomic writes -------------------------------------------------------------------------------


def _half_write_then(exc):
    def broken(f, chunks):
        chunks = list(chunks)
        for chunk in chunks[: len(chunks) // 2]:
            f.write(chunk)
        raise exc

    return broken


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()],
                         ids=["error", "ctrl-c"])
def test_interrupted_write_keeps_previous_file(tmp_path, monkeypatch, exc):
    path = saved(tmp_path)
    before = path.read_bytes()
    monkeypatch.setattr(checkpoint, "_write_all", _half_write_then(exc))
    # An OS error (a full disk) is one line that names the file and says the old one is kept.
    expected = CheckpointError if isinstance(exc, OSError) else type(exc)
    with pytest.raises(expected) as excinfo:
        checkpoint.save(path, {"new": numpy.ones(1000)}, {"epoch": 99})
    if expected is CheckpointError:
        assert str(path) in str(excinfo.value) and "previous checkpoint is kept" in str(excinfo.value)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]


@pytest.mark.parametrize("target", ["fsync", "replace"])
def test_failed_fsync_or_rename_keeps_previous_file(tmp_path, monkeypatch, target):
    path = saved(tmp_path)
    before = path.read_bytes()

    def fail(*args):
        raise OSError(f"{target} failed")

    monkeypatch.setattr(checkpoint.os, target, fail)
    with pytest.raises(CheckpointError, match=target):
        checkpoint.save(path, {"new": numpy.ones(3)}, {})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]


def test_first_save_interrupted_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "_write_all", _half_write_then(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        checkpoint.save(tmp_path / "new.safetensors", sample_arrays(), {})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "arrays, meta, match",
    [
        ({"o": numpy.array([object()])}, {}, "unsupported dtype"),
        ({"c": numpy.ones(2, complex)}, {}, "unsupported dtype"),
        ({"__metadata__": numpy.ones(2)}, {}, "invalid tensor name"),
        ({}, {"bad": object()}, "not JSON-serialisable"),
    ],
)
def test_save_refuses_unencodable_input_before_writing(tmp_path, arrays, meta, match):
    path = tmp_path / "c.safetensors"
    with pytest.raises(CheckpointError, match=match):
        checkpoint.save(path, arrays, meta)
    assert os.listdir(tmp_path) == []


# --- loading never unpickles ---------------------------------------------------------------------


def test_tripwire_works_when_unpickled(tmp_path):
    # Control: the same payload does fire when given to pickle, so the refusal tests can fail.
    pickle.loads(pickle.dumps(Tripwire(tmp_path / "fired")))
    assert (tmp_path / "fired").exists()


def test_pickle_refused_without_unpickling(tmp_path):
    sentinel = tmp_path / "sentinel"
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"w": Tripwire(sentinel)}, protocol=pickle.HIGHEST_PROTOCOL))
    assert_refused(path, "pickle", "never unpickle")
    assert not sentinel.exists()


@pytest.mark.parametrize("zipfile_format", [True, False], ids=["zip", "legacy"])
def test_torch_save_refused_without_unpickling(tmp_path, zipfile_format):
    torch = pytest.importorskip("torch")
    sentinel = tmp_path / "sentinel"
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(3), "evil": Tripwire(sentinel)}, path,
               _use_new_zipfile_serialization=zipfile_format)
    assert_refused(path, "never unpickle")
    assert not sentinel.exists()


def test_zip_with_pkl_refused(tmp_path):
    sentinel = tmp_path / "sentinel"
    path = tmp_path / "archive.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(Tripwire(sentinel)))
    assert_refused(path, "PyTorch", "never unpickle")
    assert not sentinel.exists()


def test_npz_with_object_arrays_refused(tmp_path):
    sentinel = tmp_path / "sentinel"
    path = tmp_path / "weights.npz"
    numpy.savez(path, w=numpy.ones(2), evil=numpy.array([Tripwire(sentinel)], dtype=object))
    assert_refused(path, "object arrays", "never unpickle")
    assert not sentinel.exists()


def test_plain_npz_and_npy_refused(tmp_path):
    npz = tmp_path / "w.npz"
    numpy.savez(npz, w=numpy.ones(2))
    assert_refused(npz, ".npz")
    npy = tmp_path / "w.npy"
    numpy.save(npy, numpy.ones(2))
    assert_refused(npy, ".npy")


# --- malformed safetensors -----------------------------------------------------------------------


def write_raw(path, header, data=b"", length=None):
    """Write a safetensors-like file from a header (dict or raw bytes) and a data section."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if length is None else length) + blob + data)
    return path


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


EIGHT = bytes(range(8))

# Our own checks name what is wrong; the package's, checked after them, give its own reason
# after a fixed prefix.
DECODER = "not a safetensors file xpnet reads"

MALFORMED = {
    "empty file": (lambda p: p.write_bytes(b""), "only 0 bytes"),
    "tiny file": (lambda p: p.write_bytes(b"{}\n"), "only 3 bytes"),
    "header longer than file": (lambda p: write_raw(p, {"w": entry()}, EIGHT, length=10**6),
                                "exceeds the file size"),
    "text file": (lambda p: p.write_bytes(b"hello, this is not a checkpoint at all"),
                  "not a safetensors file"),
    "header not json": (lambda p: write_raw(p, b"{not json}", EIGHT), DECODER),
    "header not object": (lambda p: write_raw(p, b"[1, 2]", EIGHT), "not a safetensors file"),
    "data without tensors": (lambda p: write_raw(p, b"{}", EIGHT), DECODER),
    "duplicate name": (lambda p: write_raw(
        p, b'{"w": %s, "w": %s}' % ((json.dumps(entry()).encode(),) * 2), EIGHT),
        "duplicate key"),
    "unknown dtype": (lambda p: write_raw(p, {"w": entry(dtype="X99")}, EIGHT), DECODER),
    "bfloat16": (lambda p: write_raw(p, {"w": entry(dtype="BF16", shape=(4,))}, EIGHT),
                 "unsupported dtype 'BF16'"),
    "missing field": (lambda p: write_raw(p, {"w": {"dtype": "F32", "shape": [2]}}, EIGHT),
                      DECODER),
    "negative offset": (lambda p: write_raw(p, {"w": entry(offsets=(-8, 0))}, EIGHT), DECODER),
    "reversed offsets": (lambda p: write_raw(p, {"w": entry(offsets=(8, 0))}, EIGHT), DECODER),
    "bad shape": (lambda p: write_raw(p, {"w": entry(shape=(2.5,))}, EIGHT), DECODER),
    "size mismatch": (lambda p: write_raw(p, {"w": entry(shape=(3,))}, EIGHT), DECODER),
    "offsets out of range": (lambda p: write_raw(p, {"w": entry(offsets=(8, 16))}, EIGHT),
                             "truncated"),
    "overlap": (lambda p: write_raw(p, {"a": entry(offsets=(0, 8)), "b": entry(offsets=(4, 12))},
                                    EIGHT + EIGHT), DECODER),
    "gap": (lambda p: write_raw(p, {"a": entry(offsets=(8, 16))}, EIGHT + EIGHT), DECODER),
    "trailing data": (lambda p: write_raw(p, {"a": entry()}, EIGHT + b"xx"), DECODER),
    "metadata not str map": (lambda p: write_raw(p, {"__metadata__": {"xpnet": 3}}), DECODER),
    "xpnet meta not json": (lambda p: write_raw(p, {"__metadata__": {"xpnet": "{oops"}}),
                            "xpnet metadata is not valid JSON"),
    "xpnet meta not object": (lambda p: write_raw(p, {"__metadata__": {"xpnet": "[1]"}}),
                              "not a JSON object"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_file_refused(tmp_path, case):
    make, fragment = MALFORMED[case]
    path = tmp_path / "bad.safetensors"
    make(path)
    assert_refused(path, fragment)


def test_truncated_checkpoint_refused(tmp_path):
    path = saved(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:-5])
    assert_refused(path, "truncated")
    path.write_bytes(raw[:12])
    assert_refused(path, "exceeds the file size")


def test_zip_that_is_damaged_refused(tmp_path):
    path = tmp_path / "broken.pt"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("archive/data.pkl", b"x" * 100)
    path.write_bytes(buffer.getvalue()[:30])
    assert_refused(path, "zip")


# --- hostile files: one line, never a traceback, bounded work --------------------------------------


def test_protocol_0_and_1_pickles_are_called_pickles(tmp_path):
    sentinel = tmp_path / "sentinel"
    for protocol in (0, 1):
        path = tmp_path / f"p{protocol}.safetensors"
        path.write_bytes(pickle.dumps({"w": Tripwire(sentinel), "epoch": 3}, protocol=protocol))
        assert_refused(path, "pickle", "never unpickle")
    assert not sentinel.exists()


@pytest.mark.parametrize("kind", ["directory", "fifo", "loop", "dangling"])
def test_a_path_that_is_no_regular_file_is_one_line(tmp_path, kind):
    path = tmp_path / "c.safetensors"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)  # opening it would block: it must be refused before
    elif kind == "loop":
        os.symlink(path, path)
    else:
        os.symlink(tmp_path / "nowhere", path)
    assert_refused(path)


def test_deeply_nested_metadata_is_refused_without_recursion_error(tmp_path):
    path = tmp_path / "deep.safetensors"
    checkpoint.save(path, {"w": numpy.ones(2, numpy.float32)}, {"x": 1})
    deep = "[" * 100_000 + "]" * 100_000
    header = json.dumps({"__metadata__": {"xpnet": deep}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})
    raw = header.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + numpy.ones(2, numpy.float32).tobytes())
    assert_refused(path, "nested")
    moderate = json.dumps({"__metadata__": {"xpnet": json.dumps({"a": json.loads("[" * 40 + "]" * 40)})},
                           "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(struct.pack("<Q", len(moderate)) + moderate + numpy.ones(2, numpy.float32).tobytes())
    assert_refused(path, "nested more than 32")


def test_a_huge_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = saved(tmp_path)
    monkeypatch.setattr(checkpoint, "MAX_BYTES", 100)
    assert_refused(path, "larger than any checkpoint")


def test_stale_temporaries_of_a_killed_save_are_removed_by_the_next_save(tmp_path):
    path = saved(tmp_path)
    dead = _dead_pid()
    stale = tmp_path / f".{path.name}.{dead}.deadbeef.tmp"
    stale.write_bytes(b"half a checkpoint")
    alive = tmp_path / f".{path.name}.1.cafebabe.tmp"  # pid 1 runs: maybe another save in progress
    alive.write_bytes(b"x")
    other = tmp_path / f".other.safetensors.{dead}.deadbeef.tmp"
    other.write_bytes(b"x")
    checkpoint.save(path, sample_arrays(), sample_meta())
    assert not stale.exists() and alive.exists() and other.exists()


def _dead_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_unwritable_folder_is_one_line(tmp_path):
    missing = tmp_path / "no" / "such" / "c.safetensors"
    with pytest.raises(CheckpointError, match="cannot write the checkpoint") as e:
        checkpoint.save(missing, sample_arrays(), {})
    assert "\n" not in str(e.value) and str(missing) in str(e.value)


# --- a training checkpoint's fields ----------------------------------------------------------------


def run_meta():
    rng = numpy.random.default_rng(0)
    return dict(
        config={"epochs": 2, "batch_size": 64}, model_config={"width": 0.125}, num_classes=10,
        epoch=1, batch=0, step=4, rng_state=rng.bit_generator.state,
        history=[{"epoch": 1, "test_accuracy": 0.5}], best_accuracy=0.5,
        optimizer_state={"steps": 4, "lr": 0.1}, data_dir="/data/mnist",
    )


def test_a_good_run_meta_passes():
    checkpoint.check_run_meta("c", run_meta(), resume=True)
    checkpoint.check_run_meta("c", {"model_config": {}, "num_classes": 10})
    # Inside an epoch, the generator's state after the batches done; optional (older checkpoints).
    inside = dict(run_meta(), batch=2, rng_state_now=numpy.random.default_rng(1).bit_generator.state)
    checkpoint.check_run_meta("c", inside, resume=True)
    checkpoint.check_run_meta("c", dict(inside, rng_state_now=None), resume=True)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("epoch", "one", "epoch must be an integer"),
        ("epoch", -1, "epoch must be in"),
        ("epoch", 1.0, "epoch must be an integer"),
        ("epoch", True, "epoch must be an integer"),
        ("batch", -5, "batch must be in"),
        ("batch", 10**30, "batch must be in"),
        ("step", None, "step must be an integer"),
        ("config", "evil", "config must be a JSON object"),
        ("config", [], "config must be a JSON object"),
        ("history", 5, "history must be a list"),
        ("history", [{"epoch": 1}, {"epoch": 2}], "history must be a list of at most"),
        ("history", ["row"], r"history\[0\]"),
        ("history", [{"test_accuracy": "high"}], r"history\[0\]"),
        ("best_accuracy", 7, "best_accuracy"),
        ("best_accuracy", "0.9", "best_accuracy"),
        ("best_accuracy", float("nan"), "best_accuracy"),
        ("rng_state", {"bit_generator": "MT19937", "state": {}}, "rng_state"),
        ("rng_state", {"bit_generator": "PCG64", "state": {"state": "x", "inc": 1}}, "rng_state"),
        ("rng_state", 5, "rng_state"),
        ("rng_state_now", {"bit_generator": "MT19937", "state": {}}, "rng_state_now must be a PCG64"),
        ("rng_state_now", {"bit_generator": "PCG64", "state": [1, 2], "has_uint32": 0, "uinteger": 0},
         "rng_state_now is not a valid"),
        ("rng_state_now", {"bit_generator": "PCG64", "state": {"state": -1, "inc": 1}, "has_uint32": 0,
                           "uinteger": 0}, "rng_state_now is not a valid"),
        ("rng_state_now", "PCG64", "rng_state_now must be a PCG64"),
        ("rng_state_now", numpy.random.default_rng(1).bit_generator.state, "rng_state_now belongs to a checkpoint"),
        ("optimizer_state", [], "optimizer_state must be a JSON object"),
        ("optimizer_state", {"lr": 0.1}, "optimizer_state has no steps"),
        ("optimizer_state", {"steps": 1, "lr": float("inf")}, "optimizer_state.lr"),
        ("optimizer_state", {"steps": -1, "lr": 0.1}, "optimizer_state.steps"),
        ("data_dir", 5, "data_dir"),
        ("data_dir", "a\0b", "data_dir"),
        ("data_dir", "x" * 5000, "data_dir"),
        ("model_config", {"width": 16}, "model_config.width"),
        ("model_config", {"evil": 1}, "unknown key"),
        ("model_config", "evil", "model_config must be a JSON object"),
        ("num_classes", "ten", "num_classes"),
        ("num_classes", 10**12, "num_classes"),
    ],
)
def test_each_bad_field_is_one_line_naming_it(field, value, match):
    meta = run_meta()
    meta[field] = value
    with pytest.raises(CheckpointError, match=match) as e:
        checkpoint.check_run_meta("ckpt", meta, resume=True)
    assert "\n" not in str(e.value) and str(e.value).startswith("ckpt: ")


@pytest.mark.parametrize("field", checkpoint.RESUME_FIELDS + ("model_config", "num_classes"))
def test_each_missing_field_is_named(field):
    meta = run_meta()
    del meta[field]
    with pytest.raises(CheckpointError, match=f"no {field}"):
        checkpoint.check_run_meta("ckpt", meta, resume=True)


def _model_state():
    return {"conv.weight": numpy.ones((2, 1, 3, 3), numpy.float32), "bn.running_var": numpy.ones(2, numpy.float32),
            "bn.num_batches_tracked": numpy.zeros((), numpy.int64)}


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("conv.weight", numpy.ones((2, 1, 3, 3), bool), "is bool, the model's is float32"),
        ("conv.weight", numpy.ones((2, 1, 3, 3), numpy.int8), "is int8"),
        ("conv.weight", numpy.ones((2, 1, 3, 3), numpy.uint64), "is uint64"),
        ("conv.weight", numpy.ones((2, 1, 3, 3), numpy.float64), "is float64"),
        ("conv.weight", numpy.ones((2, 1, 3, 4), numpy.float32), "has shape"),
        ("conv.weight", numpy.full((2, 1, 3, 3), numpy.nan, numpy.float32), "NaN or infinite"),
        ("bn.running_var", numpy.array([1, numpy.inf], numpy.float32), "NaN or infinite"),
        ("extra", numpy.ones(1, numpy.float32), "does not"),
    ],
)
def test_bad_tensors_are_refused(name, value, match):
    arrays = {f"model.{k}": v for k, v in _model_state().items()}
    arrays[f"model.{name}"] = value
    with pytest.raises(CheckpointError, match=match):
        checkpoint.check_tensors("ckpt", arrays, _model_state())
    del arrays["model.conv.weight"]
    with pytest.raises(CheckpointError, match="has no tensor model.conv.weight"):
        checkpoint.check_tensors("ckpt", arrays, _model_state())


def test_good_tensors_pass_and_num_batches_tracked_may_be_absent():
    arrays = {f"model.{k}": v for k, v in _model_state().items() if "num_batches" not in k}
    checkpoint.check_tensors("ckpt", arrays, _model_state())
