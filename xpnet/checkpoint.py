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
import itertools
import json
import os
import pickletools
import secrets
import stat
import struct
import zipfile

import numpy

from xpnet import backend
from xpnet.errors import XpnetError
from xpnet.errors import one_line as _one_line

# The dtypes xpnet stores (the package's own names); bfloat16 and complex have no NumPy twin here.
_CODES = {
    (numpy.dtype(t).kind, numpy.dtype(t).itemsize): numpy.dtype(t).newbyteorder("<")
    for t in ("f8", "f4", "f2", "i8", "i4", "i2", "i1", "u8", "u4", "u2", "u1", "?")
}

META_KEY = "xpnet"

_NEVER_UNPICKLE = "xpnet checkpoints never unpickle"

# Opcodes a protocol 0 or 1 pickle can start with: MARK, GLOBAL, EMPTY_DICT/LIST/TUPLE, NONE,
# the integer, float and string opcodes, PERSID, INST.
_PICKLE_FIRST_OPCODES = {bytes([c]) for c in b"(c}])NIJKLMFGSTUVXBCPi"}

# Larger than any checkpoint of a model the schema allows (its weights and two optimizer slots).
MAX_BYTES = 4 << 30
# xpnet's own metadata nests four levels; a file nested thousands deep is refused before anything
# walks it recursively.
MAX_META_DEPTH = 32


# A training checkpoint's arrays: the model's as "model.<name>", the optimizer's state as
# "optim.<name>.<slot>".
MODEL, OPTIM = "model.", "optim."


def section(arrays: dict, prefix: str) -> dict:
    """The arrays named ``prefix<name>``, keyed by ``<name>``."""
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def prefixed(prefix: str, arrays: dict) -> dict:
    """``arrays`` keyed by ``prefix<name>`` (the inverse of ``section``)."""
    return {prefix + k: v for k, v in arrays.items()}


class CheckpointError(XpnetError, ValueError):
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
    folder = os.path.dirname(os.path.abspath(path))
    _remove_stale_temporaries(folder, os.path.basename(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # O_EXCL: never write through a file someone else created; 0o666 lets the umask decide the
        # mode as for any ordinary file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot write the checkpoint ({_os_reason(e)})") from None
    try:
        with open(fd, "wb") as f:
            _write_all(f, _pieces(blob))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        # BaseException: Ctrl-C mid-write must not leave a half-written temporary behind either.
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            kept = "the previous checkpoint is kept" if os.path.exists(path) else "nothing was written"
            raise CheckpointError(
                f"{path}: cannot write the checkpoint ({_os_reason(e)}); {kept}"
            ) from None
        raise
    _fsync_dir(folder)


def _os_reason(e: OSError) -> str:
    return e.strerror or _one_line(e)


def _remove_stale_temporaries(folder: str, name: str) -> None:
    """Remove the temporaries of ``name`` that a killed save left in ``folder``: those of
    processes no longer running (a SIGKILL or a power cut gives a save no chance to clean up)."""
    prefix = f".{name}."
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(".tmp")):
            continue
        pid = entry[len(prefix):-len(".tmp")].split(".")[0]
        if pid.isdigit() and not _running(int(pid)):
            try:
                os.unlink(os.path.join(folder, entry))
            except OSError:
                pass


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not saving that file now: a save is not re-entered
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # alive, someone else's
    return True


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
    raw = _read_file(path)
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
    except RecursionError:
        raise CheckpointError(f"{path}: its header is nested too deeply") from None
    meta = _parse_meta(path, header.get("__metadata__"))
    arrays = {}
    for name in header:
        if name == "__metadata__":
            continue
        a = decoded[name]
        # Decoded arrays view the package's buffers; a copy owns its memory, writable and native.
        arrays[name] = a.astype(a.dtype.newbyteorder("="), copy=True)
    return arrays, meta


def _read_file(path: str) -> bytes:
    """The bytes of the regular file ``path``, at most MAX_BYTES; anything else is one line."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({_os_reason(e)})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise CheckpointError(f"{path}: {kind}, not a checkpoint file")
    if st.st_size > MAX_BYTES:
        raise CheckpointError(
            f"{path}: {st.st_size / 2**30:.1f} GiB, larger than any checkpoint xpnet writes "
            f"({MAX_BYTES / 2**30:.0f} GiB at most)"
        )
    try:
        with open(path, "rb") as f:
            return f.read(MAX_BYTES + 1)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({_os_reason(e)})") from None
    except MemoryError:
        raise CheckpointError(f"{path}: does not fit in the memory available") from None


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


def _refuse_foreign(path: str, raw: bytes) -> None:
    """Raise CheckpointError if ``raw`` is a pickle, a zip (PyTorch or .npz) or a .npy file."""
    if raw[:1] == b"\x80" or _is_text_pickle(raw):
        raise CheckpointError(
            f"{path} is a Python pickle (e.g. a legacy torch.save file); {_NEVER_UNPICKLE}"
        )
    if raw[:4] == b"PK\x03\x04":
        raise CheckpointError(
            f"{path} {_describe_zip(raw)}, not a safetensors file; {_NEVER_UNPICKLE}")
    if raw[:6] == b"\x93NUMPY":
        raise CheckpointError(f"{path} is a NumPy .npy file, not a safetensors file")


def _is_text_pickle(raw: bytes) -> bool:
    """Whether ``raw`` is a pickle of protocol 0 or 1 (no PROTO opcode in front): its opcodes are
    parsed, never run, and must end in STOP at the end of the file."""
    if not raw or raw[:1] not in _PICKLE_FIRST_OPCODES or raw.rstrip(b"\n")[-1:] != b".":
        return False
    try:
        ops = list(itertools.islice(pickletools.genops(raw), 1_000_000))
    except Exception:  # any malformed opcode stream: not a pickle
        return False
    return bool(ops) and ops[-1][0].name == "STOP"


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
        raise CheckpointError(f"{path}: xpnet metadata is not valid JSON ({_one_line(e)})") from None
    except RecursionError:
        meta = None
    if meta is None or _depth(meta) > MAX_META_DEPTH:
        raise CheckpointError(f"{path}: xpnet metadata is nested more than {MAX_META_DEPTH} levels deep")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: xpnet metadata is not a JSON object")
    return meta


def _depth(obj) -> int:
    """How deeply lists and dicts nest in ``obj``, counted without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, d)
            if d > MAX_META_DEPTH:
                return d
            stack.extend((v, d + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


# -- what a training checkpoint must hold ---------------------------------------------------------

# The metadata ``--resume`` needs beyond what evaluate and predict need (model_config, num_classes).
RESUME_FIELDS = ("config", "epoch", "batch", "step", "rng_state", "history", "best_accuracy",
                 "optimizer_state")
MAX_EPOCHS = 1_000_000
MAX_STEPS = 10**12
MAX_PATH = 4096


def check_run_meta(path, meta: dict, resume: bool = False) -> None:
    """Refuse, in one CheckpointError naming the field, the metadata of a training checkpoint that
    xpnet could not use: a missing field, a value of the wrong type or out of its range. The model
    config is checked against ``xpnet.models.schema`` (bounds, unknown keys) before any model is
    built. With ``resume``, the fields a resumed run reads too (``RESUME_FIELDS``, ``data_dir``);
    the run's config values are the training config's to check.
    """
    from xpnet.models import schema

    for field in ("model_config", "num_classes") + (RESUME_FIELDS if resume else ()):
        if field not in meta:
            raise CheckpointError(f"{path}: not an xpnet training checkpoint (no {field})")
    try:
        schema.check(meta["model_config"], meta["num_classes"])
    except schema.ModelConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if not resume:
        return

    def bad(field, why):
        raise CheckpointError(f"{path}: {field} {why}")

    def integer(field, value, high):
        if isinstance(value, bool) or not isinstance(value, int):
            bad(field, f"must be an integer, got {_short(value)}")
        if not 0 <= value <= high:
            bad(field, f"must be in 0..{high}, got {value}")

    if not isinstance(meta["config"], dict):
        bad("config", f"must be a JSON object, got {_short(meta['config'])}")
    integer("epoch", meta["epoch"], MAX_EPOCHS)
    integer("batch", meta["batch"], MAX_STEPS)
    integer("step", meta["step"], MAX_STEPS)
    best = meta["best_accuracy"]
    if not (_is_number(best) and -1.0 <= best <= 1.0):
        bad("best_accuracy", f"must be a number in [-1, 1], got {_short(best)}")
    history = meta["history"]
    if not isinstance(history, list) or len(history) > meta["epoch"]:
        bad("history", f"must be a list of at most epoch ({meta['epoch']}) rows, got {_short(history)}")
    for i, row in enumerate(history):
        if not (isinstance(row, dict) and all(isinstance(k, str) and (v is None or _is_number(v))
                                              for k, v in row.items())):
            bad(f"history[{i}]", f"must map column names to finite numbers, got {_short(row)}")
    _check_rng_state(path, meta["rng_state"])
    # Saved inside an epoch only (batch > 0): the generator as the interrupted step left it.
    now = meta.get("rng_state_now")
    if now is not None:
        _check_rng_state(path, now, "rng_state_now")
        if meta["batch"] == 0:
            bad("rng_state_now", "belongs to a checkpoint saved inside an epoch (batch > 0), got batch 0")
    opt = meta["optimizer_state"]
    if not isinstance(opt, dict):
        bad("optimizer_state", f"must be a JSON object, got {_short(opt)}")
    for key in ("steps", "lr"):
        if key not in opt:
            bad("optimizer_state", f"has no {key}")
    integer("optimizer_state.steps", opt["steps"], MAX_STEPS)
    if not (_is_number(opt["lr"]) and opt["lr"] >= 0):
        bad("optimizer_state.lr", f"must be a finite non-negative number, got {_short(opt['lr'])}")
    data_dir = meta.get("data_dir")
    if data_dir is not None and not (isinstance(data_dir, str) and 0 < len(data_dir) <= MAX_PATH
                                     and "\0" not in data_dir):
        bad("data_dir", f"must be a folder's path, got {_short(data_dir)}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and numpy.isfinite(v)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_rng_state(path, state, field="rng_state") -> None:
    """The generator state ``field`` must be one a fresh PCG64 takes (numpy checks the fields)."""
    if not (isinstance(state, dict) and state.get("bit_generator") == "PCG64"):
        raise CheckpointError(f"{path}: {field} must be a PCG64 generator state, got {_short(state)}")
    try:
        numpy.random.PCG64().state = state
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise CheckpointError(f"{path}: {field} is not a valid PCG64 state ({_one_line(e)})") from None


def check_tensors(path, arrays: dict, expected: dict, prefix: str = MODEL) -> None:
    """Refuse tensors that do not fit ``expected`` (name -> the array it will be copied into):
    every name of ``expected`` under ``prefix`` present (a BatchNorm's ``num_batches_tracked``
    may be absent) and no other, of the same shape and dtype (a bool or integer weight is not
    cast), and finite (a NaN or infinite weight or BatchNorm statistic is a diverged run)."""
    given = section(arrays, prefix)
    missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in expected]
    if missing or unexpected:
        what = (f"has no tensor {prefix}{missing[0]}" if missing
                else f"has a tensor {prefix}{unexpected[0]} the model does not")
        raise CheckpointError(f"{path}: {what} ({len(missing)} missing, {len(unexpected)} unexpected)")
    for name, target in expected.items():
        a = given.get(name)
        if a is None:
            continue
        if tuple(a.shape) != tuple(target.shape):
            raise CheckpointError(
                f"{path}: tensor {prefix}{name} has shape {tuple(a.shape)}, the model's is "
                f"{tuple(target.shape)}"
            )
        if numpy.dtype(a.dtype) != numpy.dtype(target.dtype):
            raise CheckpointError(
                f"{path}: tensor {prefix}{name} is {numpy.dtype(a.dtype).name}, the model's is "
                f"{numpy.dtype(target.dtype).name}"
            )
        if a.dtype.kind == "f" and not numpy.isfinite(a).all():
            raise CheckpointError(
                f"{path}: tensor {prefix}{name} holds NaN or infinite values (the run it saves had "
                f"diverged)"
            )
