"""Checkpoints as safetensors files, written and read here without pickle.

Layout (https://github.com/huggingface/safetensors): an 8-byte little-endian header length ``n``,
``n`` bytes of JSON mapping each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}``
(offsets relative to the data section) plus an optional ``"__metadata__"`` str -> str map, then the
raw little-endian tensor bytes. xpnet keeps its JSON-able metadata (config, epoch, RNG state,
schedule position...) as one JSON string under ``__metadata__["xpnet"]``, so other safetensors
readers can open the weights and ignore the rest.

    save("run/last.safetensors", {"conv1.weight": w}, {"epoch": 3})
    arrays, meta = load("run/last.safetensors")

Writes are atomic: a temporary file in the target's folder is flushed, fsynced and renamed over
the target, so an interrupted save leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import io
import json
import math
import os
import secrets
import struct
import zipfile

import numpy

from xpnet import backend

_DTYPES = {
    "F64": numpy.dtype("<f8"),
    "F32": numpy.dtype("<f4"),
    "F16": numpy.dtype("<f2"),
    "I64": numpy.dtype("<i8"),
    "I32": numpy.dtype("<i4"),
    "I16": numpy.dtype("<i2"),
    "I8": numpy.dtype("i1"),
    "U64": numpy.dtype("<u8"),
    "U32": numpy.dtype("<u4"),
    "U16": numpy.dtype("<u2"),
    "U8": numpy.dtype("u1"),
    "BOOL": numpy.dtype("?"),
}
_CODES = {(dt.kind, dt.itemsize): code for code, dt in _DTYPES.items()}

META_KEY = "xpnet"

# The reference implementation refuses larger headers too; ours are a few kilobytes.
_MAX_HEADER = 100 * 1024 * 1024
_NEVER_UNPICKLE = "xpnet checkpoints never unpickle"


class CheckpointError(ValueError):
    """A checkpoint cannot be written or is not a safetensors file xpnet reads (names the file)."""


def save(path, arrays: dict, meta: dict | None = None) -> None:
    """Atomically write ``arrays`` (name -> NumPy or CuPy array of any shape) and ``meta``.

    ``meta`` must be JSON-serialisable (``rng.bit_generator.state`` is, as is). Arrays keep the
    order given and are stored as little-endian bytes of a supported dtype (float16/32/64,
    int8..64, uint8..64, bool), each aligned to its item size.
    """
    path = os.fspath(path)
    header, blobs = _encode(path, arrays, {} if meta is None else meta)
    tmp = os.path.join(
        os.path.dirname(os.path.abspath(path)),
        f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp",
    )
    # O_EXCL: never write through a file someone else created; 0o666 lets the umask decide the mode
    # as for any ordinary file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with open(fd, "wb") as f:
            _write_all(f, [struct.pack("<Q", len(header)), header, *blobs])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # BaseException: Ctrl-C mid-write must not leave a half-written temporary behind either.
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _write_all(f, chunks) -> None:
    for chunk in chunks:
        f.write(chunk)


def _fsync_dir(directory: str) -> None:
    # Makes the rename itself durable on POSIX; Windows cannot open a directory and needs no such
    # step.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _encode(path: str, arrays: dict, meta: dict):
    """(header bytes padded to a multiple of 8, [contiguous little-endian arrays in file order])."""
    try:
        meta_json = json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: metadata is not JSON-serialisable ({e})") from None
    header, converted = {}, {}
    for name, a in arrays.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise CheckpointError(f"{path}: invalid tensor name {name!r}")
        a = backend.asnumpy(a)
        code = _CODES.get((a.dtype.kind, a.dtype.itemsize))
        if code is None:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {a.dtype}")
        converted[name] = numpy.asarray(a, dtype=_DTYPES[code])
        header[name] = {"dtype": code, "shape": list(a.shape)}
    # The header keeps the caller's order; the data goes widest dtype first (a stable sort), as the
    # reference writer does, so every tensor starts at a multiple of its item size.
    blobs, offset = [], 0
    for name in sorted(converted, key=lambda n: -converted[n].dtype.itemsize):
        a = converted[name]
        header[name]["data_offsets"] = [offset, offset + a.nbytes]
        # reshape(-1) copies only non-contiguous arrays (into C order); the uint8 view then writes
        # the bytes without the extra copy tobytes() would make.
        blobs.append(a.reshape(-1).view(numpy.uint8))
        offset += a.nbytes
    header["__metadata__"] = {META_KEY: meta_json}
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # Padding with spaces (as the reference writer does) keeps the data section 8-byte aligned.
    encoded += b" " * (-len(encoded) % 8)
    return encoded, blobs


def load(path):
    """Read a safetensors checkpoint; returns (arrays: dict name -> numpy.ndarray, meta: dict).

    Arrays come back on the host in the order saved, native-endian and writable; meta is the dict
    given to ``save`` ({} for safetensors files written by other tools). Raises CheckpointError,
    naming the file, for anything that is not a well-formed safetensors file: pickles and
    PyTorch/NumPy archives are recognised and refused without being unpickled.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0] if len(raw) >= 8 else None
    # Recognise safetensors by structure before foreign signatures: a header length of 128 + 256k
    # also starts with the pickle opcode byte 0x80.
    if n is None or n > len(raw) - 8 or raw[8:9] != b"{":
        _refuse_foreign(path, raw)
    if n is None:
        raise CheckpointError(f"{path}: not a safetensors file (only {len(raw)} bytes)")
    if n > len(raw) - 8:
        raise CheckpointError(
            f"{path}: not a safetensors file: header length {n} exceeds the file size "
            f"({len(raw)} bytes)"
        )
    if n > _MAX_HEADER:
        raise CheckpointError(f"{path}: safetensors header of {n} bytes is implausibly large")
    if raw[8:9] != b"{":
        raise CheckpointError(f"{path}: not a safetensors file (header does not start with '{{')")
    header = _parse_header(path, raw[8:8 + n])
    data = memoryview(raw)[8 + n:]
    meta = _parse_meta(path, header.pop("__metadata__", None))
    entries = {name: _parse_entry(path, name, entry) for name, entry in header.items()}
    for name, (_, _, begin, end) in entries.items():
        if end > len(data):
            raise CheckpointError(
                f"{path}: truncated file or data_offsets out of range: tensor {name!r} needs bytes "
                f"{begin}..{end} of the data section but it has only {len(data)}"
            )
    _check_layout(path, [(begin, end, name) for name, (_, _, begin, end) in entries.items()],
                  len(data))
    # astype copies: the arrays own their memory (writable, native-endian) instead of pinning `raw`.
    arrays = {
        name: numpy.frombuffer(data[begin:end], dtype=dtype).reshape(shape).astype(
            dtype.newbyteorder("="))
        for name, (dtype, shape, begin, end) in entries.items()
    }
    return arrays, meta


def _refuse_foreign(path: str, raw: bytes) -> None:
    """Raise CheckpointError if ``raw`` is a pickle, a zip (PyTorch or .npz) or a .npy file."""
    if raw[:1] == b"\x80":
        raise CheckpointError(
            f"{path} is a Python pickle (e.g. a legacy torch.save file); {_NEVER_UNPICKLE}"
        )
    if raw[:4] == b"PK\x03\x04":
        raise CheckpointError(
            f"{path} {_describe_zip(raw)}, not a safetensors file; {_NEVER_UNPICKLE}")
    if raw[:6] == b"\x93NUMPY":
        raise CheckpointError(f"{path} is a NumPy .npy file, not a safetensors file")


def _describe_zip(raw: bytes) -> str:
    """What kind of zip archive ``raw`` is, judged from member names and .npy headers only."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            names = z.namelist()
            if any(name.endswith(".pkl") for name in names):
                return "is a PyTorch checkpoint (a zip holding a pickle)"
            if names and all(name.endswith(".npy") for name in names):
                for name in names:
                    with z.open(name) as member:
                        if _npy_holds_objects(member):
                            return "is a NumPy .npz archive with object arrays (pickled data)"
                return "is a NumPy .npz archive"
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return "is a damaged zip archive"
    return "is a zip archive"


def _npy_holds_objects(f) -> bool:
    """Whether the .npy stream ``f`` declares an object dtype; reads its header only (no pickle)."""
    fmt = numpy.lib.format
    version = fmt.read_magic(f)
    read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    _, _, dtype = read_header(f)
    return dtype.hasobject


def _reject_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def _parse_header(path: str, blob: bytes) -> dict:
    try:
        header = json.loads(blob.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not a safetensors file (header is not valid JSON: {e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not a JSON object)")
    return header


def _parse_meta(path: str, entry) -> dict:
    if entry is None:
        return {}
    if not (isinstance(entry, dict) and all(isinstance(v, str) for v in entry.values())):
        raise CheckpointError(f"{path}: __metadata__ must map strings to strings")
    if META_KEY not in entry:
        return {}
    try:
        meta = json.loads(entry[META_KEY])
    except ValueError as e:
        raise CheckpointError(f"{path}: xpnet metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: xpnet metadata is not a JSON object")
    return meta


def _is_index(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _parse_entry(path: str, name: str, entry):
    """(dtype, shape, begin, end) of one header entry, checked for consistency."""
    if not (isinstance(entry, dict) and {"dtype", "shape", "data_offsets"} <= entry.keys()):
        raise CheckpointError(f"{path}: tensor {name!r} needs dtype, shape and data_offsets")
    dtype = _DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {entry['dtype']!r}")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not (isinstance(shape, list) and all(_is_index(d) for d in shape)):
        raise CheckpointError(f"{path}: tensor {name!r} has invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_index, offsets))
            and offsets[0] <= offsets[1]):
        raise CheckpointError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if end - begin != math.prod(shape) * dtype.itemsize:
        raise CheckpointError(
            f"{path}: tensor {name!r} of shape {shape} and dtype {entry['dtype']} needs "
            f"{math.prod(shape) * dtype.itemsize} bytes but data_offsets span {end - begin}"
        )
    return dtype, tuple(shape), begin, end


def _check_layout(path: str, spans, size: int) -> None:
    """The tensors must tile the data section exactly: no overlaps, no gaps, no trailing bytes."""
    position = 0
    previous = None
    for begin, end, name in sorted(spans):
        if begin < position:
            raise CheckpointError(
                f"{path}: tensors {previous!r} and {name!r} overlap in the data section")
        if begin > position:
            raise CheckpointError(f"{path}: {begin - position} unused bytes before tensor {name!r}")
        # Zero-size tensors share their offset with a neighbour without overlapping it.
        if end > begin:
            position, previous = end, name
    if position != size:
        raise CheckpointError(f"{path}: {size - position} trailing bytes after the last tensor")
