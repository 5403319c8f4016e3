"""Checkpoints as safetensors files: the ``safetensors`` package encodes and decodes them, no pickle.

A file is the weights (and optimizer state) as named tensors plus xpnet's own JSON metadata
(config, epoch, RNG state, schedule position...), kept as one JSON string under
``__metadata__["xpnet"]`` so any safetensors reader opens the weights and ignores the rest.

    save("run/last.safetensors", {"conv1.weight": w}, {"epoch": 3})
    arrays, meta = load("run/last.safetensors")

What is ours around the package: writes are atomic (a temporary file in the target's folder is
flushed, fsynced and renamed over the target, so an interrupted save leaves the previous checkpoint
as it was); pickles, PyTorch archives and NumPy files are recognised from their first bytes and
refused with one line, never unpickled; every fault is one CheckpointError naming the file. Files
written by xpnet's earlier hand-written encoder follow the same format and load as they are.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import struct
import zipfile

import numpy

from xpnet import backend

# The dtypes xpnet stores (the package's own names); bfloat16 and complex have no NumPy twin here.
_CODES = {
    (numpy.dtype(t).kind, numpy.dtype(t).itemsize): numpy.dtype(t).newbyteorder("<")
    for t in ("f8", "f4", "f2", "i8", "i4", "i2", "i1", "u8", "u4", "u2", "u1", "?")
}

META_KEY = "xpnet"

_NEVER_UNPICKLE = "xpnet checkpoints never unpickle"


class CheckpointError(ValueError):
    """A checkpoint cannot be written or is not a safetensors file xpnet reads (names the file)."""


def _safetensors(path):
    # A dependency of xpnet; the import stays here so that the array core imports with NumPy alone.
    try:
        import safetensors
        import safetensors.numpy
    except ImportError:
        raise CheckpointError(
            f"{path}: reading and writing checkpoints needs the safetensors package, a dependency "
            f"of xpnet: pip install xpnet (or pip install safetensors)"
        ) from None
    return safetensors


def save(path, arrays: dict, meta: dict | None = None) -> None:
    """Atomically write ``arrays`` (name -> NumPy or CuPy array of any shape) and ``meta``.

    ``meta`` must be JSON-serialisable (``rng.bit_generator.state`` is, as is). Arrays are stored
    as little-endian bytes of a supported dtype (float16/32/64, int8..64, uint8..64, bool).
    """
    path = os.fspath(path)
    try:
        meta_json = json.dumps({} if meta is None else meta)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: metadata is not JSON-serialisable ({e})") from None
    tensors = {}
    for name, a in arrays.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise CheckpointError(f"{path}: invalid tensor name {name!r}")
        a = backend.asnumpy(a)
        dtype = _CODES.get((a.dtype.kind, a.dtype.itemsize))
        if dtype is None or a.dtype.hasobject:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {a.dtype}")
        # The package reads each tensor's memory as one dense block: contiguous, little-endian.
        tensors[name] = numpy.asarray(a, dtype=dtype, order="C")
    st = _safetensors(path)
    try:
        blob = st.numpy.save(tensors, metadata={META_KEY: meta_json})
    except (st.SafetensorError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: cannot encode the checkpoint ({_one_line(e)})") from None
    _write_atomically(path, blob)


def _write_atomically(path: str, blob: bytes) -> None:
    tmp = os.path.join(
        os.path.dirname(os.path.abspath(path)),
        f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp",
    )
    # O_EXCL: never write through a file someone else created; 0o666 lets the umask decide the mode
    # as for any ordinary file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with open(fd, "wb") as f:
            _write_all(f, _pieces(blob))
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


def _pieces(blob: bytes, size: int = 1 << 22):
    view = memoryview(blob)
    return [view[i:i + size] for i in range(0, max(len(view), 1), size)]


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


def load(path):
    """Read a safetensors checkpoint; returns (arrays: dict name -> numpy.ndarray, meta: dict).

    Arrays come back on the host, in the order of the file's header, native-endian and writable;
    meta is the dict given to ``save`` ({} for safetensors files written by other tools). Raises
    CheckpointError, naming the file, for anything that is not a well-formed safetensors file:
    pickles and PyTorch/NumPy archives are recognised and refused without being unpickled.
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
            f"{path}: not a safetensors file, or a truncated one: header length {n} exceeds the "
            f"file size ({len(raw)} bytes)"
        )
    st = _safetensors(path)
    try:
        decoded = st.numpy.load(raw)
    except st.SafetensorError as e:
        raise CheckpointError(
            f"{path}: {_truncation(raw, n) or 'not a safetensors file xpnet reads'} ({_one_line(e)})"
        ) from None
    except KeyError as e:  # a dtype the package decodes but has no NumPy type for (BF16...)
        raise CheckpointError(f"{path}: unsupported dtype {e}") from None
    # The package has checked the header; ours is the metadata, the order of the names and a
    # duplicate name, which the package lets the last one win.
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except ValueError as e:
        raise CheckpointError(f"{path}: not a safetensors file xpnet reads ({e})") from None
    meta = _parse_meta(path, header.get("__metadata__"))
    arrays = {}
    for name in header:
        if name == "__metadata__":
            continue
        a = decoded[name]
        # Decoded arrays view the package's buffers; a copy owns its memory, writable and native.
        arrays[name] = a.astype(a.dtype.newbyteorder("="), copy=True)
    return arrays, meta


def _truncation(raw: bytes, n: int) -> str | None:
    """'truncated: ...' when the header asks for more data than the file holds, else None."""
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"))
        need = max((e["data_offsets"][1] for k, e in header.items() if k != "__metadata__"),
                   default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    have = len(raw) - 8 - n
    if not isinstance(need, int) or need <= have:
        return None
    return f"truncated: its tensors need {need} bytes of data but the file holds {have}"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


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
