"""Hostile input and bad luck, one or more cases for every class of issue 17's list: each asserts
one line on stderr (no traceback), the exit code, bounded memory where an input could ask for
more, and that nothing already saved was lost.

The classes: (1) two runs into one folder, (2) signals at any moment, (3) memory exhaustion from
small files, (4) hostile checkpoints on resume, evaluate and predict, (5) bad weights, (6) other
image sizes, (7) output paths, (8) misleading messages, (9) predict's images (the "ux" engineer's
tests), (10) flags and environment, (11) a stored data folder, (12) an MPI rank that stops (in
tests/test_distributed.py, which has the mpiexec helpers).

Runs on tiny synthetic digits; the cases that need a process of their own (signals, locks,
memory, hangs) run ``python -m xpnet`` and read its peak memory from ``wait4``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy
import pytest

from _digits import digit_folder, write_idx_set

from xpnet import checkpoint
from xpnet.cli import main
from xpnet.data import MNIST

TINY = ["--width", "0.125", "--batch-size", "32", "--eval-batch-size", "50", "--no-plots"]
MB = 1 << 20


# -- helpers ----------------------------------------------------------------------------------------


class Result:
    def __init__(self, code, out, err, rss_mb=None):
        self.code, self.out, self.err, self.rss_mb = code, out, err, rss_mb

    def __repr__(self):
        return f"Result(code={self.code}, rss={self.rss_mb} MB, out={self.out[-300:]!r}, err={self.err[-600:]!r})"


class _PeakWatcher:
    """The largest VmHWM (kB) read from /proc/PID/status while a child runs: its own peak RSS,
    since its exec (the child's memory after exec is a new one, with its own high-water mark)."""

    def __init__(self, pid):
        self.kb, self._done = 0, threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(f"/proc/{pid}/status",), daemon=True)
        self._thread.start()

    def _watch(self, path):
        while not self._done.is_set():
            try:
                with open(path) as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            self.kb = max(self.kb, int(line.split()[1]))
            except (OSError, ValueError):
                return
            self._done.wait(0.005)

    def stop(self):
        self._done.set()
        self._thread.join()


def xpnet(*argv, cwd=None, env=None, timeout=120, during=None):
    """``python -m xpnet ARGV`` in its own process -> Result with its peak RSS in MB.

    ``during(proc, out_path)``: called while it runs (to send signals), with the path its stdout
    goes to."""
    env = {**os.environ, "XPNET_THREADS": "1", **(env or {})}
    env.pop("XPNET_DATA", None) if env.get("XPNET_DATA") == "" else None
    out_path = Path(tempfile.mkstemp(prefix="xpnet-out-")[1])
    err_path = Path(tempfile.mkstemp(prefix="xpnet-err-")[1])
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "xpnet", *map(str, argv)], stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, cwd=cwd, env=env, start_new_session=True)
        timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        peak = _PeakWatcher(proc.pid)
        try:
            if during is not None:
                during(proc, out_path)
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            peak.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)
    # wait4's ru_maxrss is the fallback only: Linux carries the parent's high-water mark across
    # the fork and exec, so a child of a large test process would report that process's size.
    peak_kb = peak.kb or usage.ru_maxrss
    result = Result(proc.returncode, out_path.read_text(), err_path.read_text(), peak_kb / 1024)
    out_path.unlink()
    err_path.unlink()
    return result


def one_line(r, code=1, *fragments):
    """The error is one line on stderr (after argparse's usage, for a usage error), with the exit
    code and every fragment; returns the line."""
    assert r.code == code, r
    assert "Traceback" not in r.err, r
    lines = [line for line in r.err.strip().splitlines() if line.strip()]
    if code == 2 and lines and lines[0].startswith("usage:"):
        lines = [line for line in lines if "error:" in line]
    assert len(lines) == 1, r
    for fragment in fragments:
        assert fragment in lines[0], r
    return lines[0]


def run(capsys, *argv):
    """``main(ARGV)`` in this process -> Result (no traceback may escape: main must return)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return Result(code, out, err)


def digest(folder) -> dict:
    """name -> sha256 of every file in ``folder``: what "nothing saved was lost" compares."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def poll(predicate, timeout=60.0):
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return digit_folder(tmp_path_factory.mktemp("digits"), 128, 100)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits):
    """A finished one-epoch run of the tiny net: its folder."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "--data-dir", str(digits), "--out", str(out), "--epochs", "1", *TINY]) == 0
    return out


@pytest.fixture
def run_copy(trained, tmp_path):
    """A copy of the trained run's folder, free to be attacked."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def rewrite(path, meta_edit=None, arrays_edit=None, dest=None):
    """Save ``path``'s checkpoint again with its metadata and arrays edited (in place)."""
    arrays, meta = checkpoint.load(path)
    if meta_edit:
        meta_edit(meta)
    if arrays_edit:
        arrays_edit(arrays)
    checkpoint.save(dest or path, arrays, meta)
    return dest or path


def write_raw_header(path, header: str, data: bytes = b""):
    """A safetensors file with a hand-written JSON header."""
    raw = header.encode()
    Path(path).write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


# == (1) two runs into one folder =====================================================================


def test_1_a_second_run_into_a_held_folder_is_refused_naming_the_holder(tmp_path, digits):
    out = tmp_path / "race"
    seen = {}

    def second(proc, out_path):
        poll(lambda: (out / "last.safetensors").exists())
        seen["pid"] = proc.pid
        seen["r"] = xpnet("train", "--data-dir", digits, "--out", out, "--epochs", "1", *TINY, cwd=tmp_path)
        seen["r_overwrite"] = xpnet("train", "--data-dir", digits, "--out", out, "--epochs", "1", "--overwrite",
                                    *TINY, cwd=tmp_path)
        os.kill(proc.pid, signal.SIGTERM)

    first = xpnet("train", "--data-dir", digits, "--out", out, "--epochs", "40", *TINY, cwd=tmp_path, during=second)
    for r in (seen["r"], seen["r_overwrite"]):
        one_line(r, 1, str(out), str(seen["pid"]))
    assert first.code == 143, first
    _, meta = checkpoint.load(out / "last.safetensors")
    assert meta["config"]["epochs"] == 40  # the first run's checkpoint, not the second's


def test_1_simultaneous_runs_without_out_get_different_folders(tmp_path, digits):
    args = ["train", "--data-dir", digits, "--epochs", "1", "--train-subset", "32", *TINY]
    results = [None, None]

    def go(i):
        results[i] = xpnet(*args, cwd=tmp_path)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.code == 0 for r in results), results
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert folders == ["run-1", "run-2"]
    outs = sorted(r.out.split("; out: ")[1].split()[0] for r in results)
    assert outs == ["runs/run-1", "runs/run-2"]


# == (2) signals ==================================================================================


def _signal_when(sig, marker, times=1, gap=0.0):
    def during(proc, out_path):
        poll(lambda: marker(out_path.read_text()))
        for i in range(times):
            if i:
                time.sleep(gap)
            os.kill(proc.pid, sig)
    return during


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_2_a_signal_mid_epoch_saves_a_consistent_checkpoint_and_says_so(tmp_path, digits, sig, code):
    out = tmp_path / "r"
    r = xpnet("train", "--data-dir", digits, "--out", out, "--epochs", "40", *TINY, cwd=tmp_path,
              during=_signal_when(sig, lambda text: "epoch 1/40" in text))
    assert r.code == code, r
    assert "Traceback" not in r.err
    said = [line for line in (r.out + r.err).splitlines() if "saved" in line or "kept" in line]
    assert len(said) == 1 and "last.safetensors" in said[0], r
    _, meta = checkpoint.load(out / "last.safetensors")
    assert meta["epoch"] >= 1  # at least the finished epochs
    assert main(["train", "--resume", str(out / "last.safetensors"), "--epochs", "40", "--stop-after", "1"]) in (0,)


def _kill_self_during(monkeypatch, module, name, sig, times=1):
    """Make the first call of ``module.name`` send ``sig`` to this process ``times`` times."""
    real, sent = getattr(module, name), []

    def wrapper(*args, **kwargs):
        while len(sent) < times:
            sent.append(sig)
            os.kill(os.getpid(), sig)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return sent


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("where", ["evaluation", "checkpoint write", "figures"])
def test_2_a_signal_anywhere_after_training_began_ends_with_a_whole_checkpoint(tmp_path, digits, capsys,
                                                                               monkeypatch, where, sig, code):
    from xpnet.training import plots, runner

    module, name = {"evaluation": (runner, "evaluate"), "checkpoint write": (checkpoint, "_write_all"),
                    "figures": (plots, "write_all")}[where]
    _kill_self_during(monkeypatch, module, name, sig)
    out = tmp_path / "r"
    flags = [f for f in TINY if f != "--no-plots"] if where == "figures" else TINY
    r = run(capsys, "train", "--data-dir", digits, "--out", out, "--epochs", "1", *flags)
    assert r.code == code, r
    said = [line for line in (r.out + r.err).splitlines() if "interrupted" in line or "stopped" in line]
    assert len(said) == 1 and "saved" in said[0] and "end of epoch 1" in said[0], r
    _, meta = checkpoint.load(out / "last.safetensors")
    assert (meta["epoch"], meta["batch"]) == (1, 0)  # the whole epoch, evaluated


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_2_a_signal_while_loading_the_data_stops_at_once_saying_nothing_was_saved(tmp_path, digits, capsys,
                                                                                   monkeypatch, sig, code):
    from xpnet.data import folder

    _kill_self_during(monkeypatch, folder, "load_mnist", sig)
    r = run(capsys, "train", "--data-dir", digits, "--out", tmp_path / "r", *TINY)
    line = one_line(r, code, "stopped before training began", "nothing was saved")
    assert signal.Signals(sig).name in line
    assert not (tmp_path / "r").exists()  # the folder it made is gone again


def test_2_a_signal_while_resuming_says_the_resumed_checkpoint_is_kept(run_copy, digits, capsys, monkeypatch):
    from xpnet.data import folder

    before = digest(run_copy)
    _kill_self_during(monkeypatch, folder, "load_mnist", signal.SIGTERM)
    r = run(capsys, "train", "--resume", run_copy, "--data-dir", digits)
    one_line(r, 143, "last.safetensors is kept")
    assert digest(run_copy) == before


def test_2_a_second_signal_during_a_checkpoint_write_keeps_the_previous_checkpoint(run_copy, digits, capsys,
                                                                                   monkeypatch):
    rewrite(run_copy / "last.safetensors", _config("epochs", 2))
    before = digest(run_copy)["last.safetensors"]
    _kill_self_during(monkeypatch, checkpoint, "_write_all", signal.SIGINT, times=2)
    r = run(capsys, "train", "--resume", run_copy, "--data-dir", digits, "--epochs", "2", "--no-plots")
    line = one_line(r, 130, "second SIGINT: stopped at once", "last.safetensors")
    assert "is kept" in line
    assert digest(run_copy)["last.safetensors"] == before
    assert not list(run_copy.glob(".*.tmp"))


def test_2_sigint_in_a_background_job_where_the_shell_ignores_it(tmp_path, digits):
    """A shell starts background jobs with SIGINT ignored; SIGTERM must still stop them cleanly."""
    out = tmp_path / "r"
    argv = [str(a) for a in ["train", "--data-dir", digits, "--out", out, "--epochs", "40", *TINY]]
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); from xpnet.cli import main; "
            f"sys.exit(main({argv!r}))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "XPNET_THREADS": "1"})
    poll(lambda: (out / "last.safetensors").exists())
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in stderr, (stdout, stderr)
    checkpoint.load(out / "last.safetensors")


def test_2_a_second_signal_stops_at_once_and_says_so(tmp_path, digits):
    out = tmp_path / "r"
    r = xpnet("train", "--data-dir", digits, "--out", out, "--epochs", "40", *TINY, cwd=tmp_path,
              during=_signal_when(signal.SIGINT, lambda text: "epoch 1/40" in text, times=2, gap=0.0))
    assert r.code == 130, r
    assert "Traceback" not in r.err
    text = r.out + r.err
    assert "second" in text or "at once" in text, r
    checkpoint.load(out / "last.safetensors")  # whatever was saved is whole


# == (3) memory from small files =================================================================


def _set_with(folder, name, payload: bytes, gz: bool):
    digit_folder(folder, 64, 50)
    for suffix in ("", ".gz"):
        (folder / (name + suffix)).unlink(missing_ok=True)
    target = folder / (name + (".gz" if gz else ""))
    if gz:
        with gzip.open(target, "wb", compresslevel=9) as f:
            f.write(payload)
    else:
        target.write_bytes(payload)
    return target


def _idx_header(*dims):
    return struct.pack(">HBB", 0, 0x08, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


def test_3_a_gzip_bomb_stops_inflating_at_the_declared_size(tmp_path):
    folder = tmp_path / "d"
    target = folder / "train-images-idx3-ubyte.gz"
    digit_folder(folder, 64, 50)
    with gzip.open(target, "wb", compresslevel=9) as f:
        f.write(_idx_header(64, 28, 28))
        zeros = bytes(64 * MB)
        for _ in range(16):  # 1 GiB of zeros after 64 images' worth: about 1 MB on disk
            f.write(zeros)
    assert target.stat().st_size < 3 * MB
    r = xpnet("train", "--data-dir", folder, "--out", tmp_path / "o", "--epochs", "1", *TINY, cwd=tmp_path)
    one_line(r, 1, "trailing bytes", "train-images-idx3-ubyte.gz")
    assert r.rss_mb < 250, r


def test_3_a_header_larger_than_its_gzip_can_hold_is_refused_before_inflating(tmp_path):
    target = _set_with(tmp_path / "d", "train-images-idx3-ubyte", _idx_header(60000, 2000, 2000) + bytes(1000), gz=True)
    r = xpnet("train", "--data-dir", target.parent, "--out", tmp_path / "o", *TINY, cwd=tmp_path)
    one_line(r, 1, "cannot hold that much")
    assert r.rss_mb < 250, r


def test_3_a_sparse_raw_file_is_refused_by_its_size(tmp_path):
    folder = tmp_path / "d"
    digit_folder(folder, 64, 50)
    (folder / "train-images-idx3-ubyte.gz").unlink()
    target = folder / "train-images-idx3-ubyte"
    with open(target, "wb") as f:
        f.write(_idx_header(1024, 28, 28))
        f.truncate(6 << 30)  # 6 GiB, sparse: costs nothing on disk
    t0 = time.monotonic()
    r = xpnet("train", "--data-dir", folder, "--out", tmp_path / "o", *TINY, cwd=tmp_path)
    one_line(r, 1, "trailing bytes", "train-images-idx3-ubyte")
    assert r.rss_mb < 250 and time.monotonic() - t0 < 30, r


@pytest.mark.parametrize("width", [16, 300])
def test_3_a_stored_width_beyond_the_schema_is_refused_before_a_model_is_built(trained, tmp_path, digits, width):
    path = rewrite(trained / "last.safetensors", lambda m: m["model_config"].update(width=width),
                   dest=tmp_path / "wide.safetensors")
    t0 = time.monotonic()
    r = xpnet("evaluate", "--checkpoint", path, "--data-dir", digits, cwd=tmp_path)
    one_line(r, 1, "model_config.width", str(path))
    assert r.rss_mb < 300 and time.monotonic() - t0 < 30, r


def test_3_an_evaluation_batch_beyond_the_test_set_runs_as_one_pass_in_bounded_memory(trained, tmp_path, digits):
    small = xpnet("evaluate", "--checkpoint", trained / "last.safetensors", "--data-dir", digits, "--json",
                  cwd=tmp_path)
    huge = xpnet("evaluate", "--checkpoint", trained / "last.safetensors", "--data-dir", digits, "--json",
                 "--batch-size", str(10**12), cwd=tmp_path)
    assert small.code == huge.code == 0, (small, huge)
    a, b = json.loads(small.out), json.loads(huge.out)
    assert a["test_accuracy"] == b["test_accuracy"] and abs(a["test_loss"] - b["test_loss"]) < 1e-5
    assert huge.rss_mb < 400, huge


def test_3_an_evaluation_batch_that_would_not_fit_in_memory_is_one_line(trained, tmp_path, capsys, monkeypatch):
    from xpnet.tools import memory

    many = digit_folder(tmp_path / "many", 16, 1500)
    monkeypatch.setattr(memory, "available_bytes", lambda: 2**20)
    r = run(capsys, "evaluate", "--checkpoint", trained / "last.safetensors", "--data-dir", many,
            "--batch-size", "1500")
    one_line(r, 1, "--batch-size 1500", "GiB")


def test_3_a_stored_num_classes_of_1e12_is_refused(trained, tmp_path, digits, capsys):
    path = rewrite(trained / "last.safetensors", lambda m: m.update(num_classes=10**12),
                   dest=tmp_path / "c.safetensors")
    one_line(run(capsys, "evaluate", "--checkpoint", path, "--data-dir", digits), 1, "num_classes")


# == (4) hostile checkpoints: resume, evaluate, predict =============================================


def _drop(key):
    return lambda m: m.pop(key)


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


def _config(key, value):
    return lambda m: m["config"].__setitem__(key, value)


META_ATTACKS = {
    "negative batch": (_set("batch", -3), "batch"),
    "batch_size 0": (_config("batch_size", 0), "batch_size"),
    "batch_size -5": (_config("batch_size", -5), "batch_size"),
    "batch_size string": (_config("batch_size", "64"), "batch_size"),
    "no optimizer state": (_drop("optimizer_state"), "optimizer_state"),
    "no generator state": (_drop("rng_state"), "rng_state"),
    "bad generator state": (_set("rng_state", {"bit_generator": "PCG64", "state": {"state": -1, "inc": "x"}}),
                            "rng_state"),
    "config a string": (_set("config", "evil"), "config"),
    "epoch a string": (_set("epoch", "one"), "epoch"),
    "epoch float": (_set("epoch", 1.5), "epoch"),
    "history a number": (_set("history", 5), "history"),
    "history of strings": (_set("history", ["x"]), "history"),
    "data_dir a number": (_set("data_dir", 5), "data_dir"),
    "best_accuracy a string": (_set("best_accuracy", "high"), "best_accuracy"),
    "best_accuracy 7": (_set("best_accuracy", 7), "best_accuracy"),
    "unknown model key": (lambda m: m["model_config"].update(evil=1), "unknown key"),
    "dropout 5": (lambda m: m["model_config"].update(dropout=5), "dropout"),
    "num_classes a string": (_set("num_classes", "ten"), "num_classes"),
    "config lr infinite": (_config("lr", float("inf")), "lr"),
    "config momentum 1.5": (_config("momentum", 1.5), "momentum"),
    "config optimizer unknown": (_config("optimizer", "rmsprop"), "optimizer"),
    "config epochs 0": (_config("epochs", 0), "epochs"),
    "config seed negative": (_config("seed", -1), "seed"),
    "config width 1e9": (_config("width", 1e9), "width"),
    "optimizer steps negative": (lambda m: m["optimizer_state"].update(steps=-1), "optimizer_state"),
    "no config": (_drop("config"), "config"),
    "no model config": (_drop("model_config"), "model_config"),
}


@pytest.mark.parametrize("attack", sorted(META_ATTACKS))
def test_4_hostile_metadata_on_resume_is_one_line_and_loses_nothing(run_copy, capsys, attack):
    edit, field = META_ATTACKS[attack]
    path = rewrite(run_copy / "last.safetensors", edit)
    before = digest(run_copy)
    r = run(capsys, "train", "--resume", path, "--no-plots")
    one_line(r, 1, field)
    assert digest(run_copy) == before


EVAL_ATTACKS = {k: v for k, v in META_ATTACKS.items()
                if k in ("unknown model key", "dropout 5", "num_classes a string", "no model config")}


@pytest.mark.parametrize("attack", sorted(EVAL_ATTACKS))
def test_4_hostile_metadata_on_evaluate_is_one_line(run_copy, capsys, digits, attack):
    edit, field = EVAL_ATTACKS[attack]
    path = rewrite(run_copy / "last.safetensors", edit)
    one_line(run(capsys, "evaluate", "--checkpoint", path, "--data-dir", digits), 1, field)


def _nested(tmp_path, depth):
    meta = "[" * depth + "]" * depth
    header = json.dumps({"__metadata__": {"xpnet": meta}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})
    return write_raw_header(tmp_path / "deep.safetensors", header, bytes(4))


@pytest.mark.parametrize("command", ["evaluate", "resume"])
@pytest.mark.parametrize("kind", ["directory", "symlink loop", "fifo", "nested 100000", "protocol-0 pickle",
                                  "empty file", "not there"])
def test_4_a_checkpoint_that_is_no_checkpoint_is_one_line(tmp_path, digits, capsys, command, kind):
    path = tmp_path / "c.safetensors"
    if kind == "directory":
        path.mkdir()
    elif kind == "symlink loop":
        os.symlink(path, path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "nested 100000":
        path = _nested(tmp_path, 100_000)
    elif kind == "protocol-0 pickle":
        path.write_bytes(b"(dp0\nVepoch\np1\nI3\ns.")
    elif kind == "empty file":
        path.write_bytes(b"")
    argv = (["evaluate", "--checkpoint", path, "--data-dir", digits] if command == "evaluate"
            else ["train", "--resume", path, "--data-dir", digits])
    line = one_line(run(capsys, *argv), 1, str(path))
    if kind == "protocol-0 pickle":
        assert "pickle" in line


def test_4_predict_refuses_a_hostile_checkpoint_in_one_line(run_copy, capsys, tmp_path):
    from PIL import Image

    Image.fromarray(numpy.zeros((28, 28), numpy.uint8)).save(tmp_path / "d.png")
    path = rewrite(run_copy / "last.safetensors", lambda m: m["model_config"].update(width=16))
    one_line(run(capsys, "predict", "--checkpoint", path, tmp_path / "d.png"), 1, "width")


# == (5) bad weights =============================================================================


def _weights_as(fn):
    def edit(arrays):
        for k in list(arrays):
            if k.startswith("model.") and arrays[k].dtype.kind == "f":
                arrays[k] = fn(arrays[k])
    return edit


def _first_weight(fn):
    def edit(arrays):
        k = next(k for k in arrays if k.endswith(".weight"))
        arrays[k] = fn(arrays[k])
    return edit


def _bn_var(fn):
    def edit(arrays):
        k = next(k for k in arrays if k.endswith("running_var"))
        arrays[k] = fn(arrays[k])
    return edit


WEIGHT_ATTACKS = {
    "bool weights": (_weights_as(lambda a: a > 0), "bool"),
    "int8 weights": (_weights_as(lambda a: a.astype(numpy.int8)), "int8"),
    "uint64 weights": (_weights_as(lambda a: a.astype(numpy.uint64)), "uint64"),
    "float64 weights": (_weights_as(lambda a: a.astype(numpy.float64)), "float64"),
    "a NaN weight": (_first_weight(lambda a: numpy.where(numpy.arange(a.size).reshape(a.shape) == 0, numpy.nan, a)
                                   .astype(a.dtype)), "NaN or infinite"),
    "an infinite BatchNorm variance": (_bn_var(lambda a: numpy.full_like(a, numpy.inf)), "NaN or infinite"),
    "a wrong shape": (_first_weight(lambda a: a[:1]), "shape"),
    "a missing tensor": (lambda arrays: arrays.pop(next(k for k in arrays if k.endswith(".weight"))), "has no tensor"),
}


@pytest.mark.parametrize("command", ["evaluate", "resume"])
@pytest.mark.parametrize("attack", sorted(WEIGHT_ATTACKS))
def test_5_bad_weights_are_refused_naming_the_tensor(run_copy, capsys, digits, attack, command):
    edit, fragment = WEIGHT_ATTACKS[attack]
    path = rewrite(run_copy / "last.safetensors", arrays_edit=edit)
    before = digest(run_copy)
    argv = (["evaluate", "--checkpoint", path, "--data-dir", digits] if command == "evaluate"
            else ["train", "--resume", path, "--no-plots"])
    one_line(run(capsys, *argv), 1, fragment)
    assert digest(run_copy) == before


def test_5_a_run_whose_state_becomes_non_finite_stops_and_keeps_the_last_good_checkpoint(tmp_path, digits, capsys):
    out = tmp_path / "r"
    r = run(capsys, "train", "--data-dir", digits, "--out", out, "--epochs", "30", "--lr", "1e6",
            "--schedule", "constant", "--optimizer", "sgd", *TINY)
    line = one_line(r, 1, "non-finite" if "non-finite" in r.err else "became")
    for name in ("last.safetensors", "best.safetensors"):
        if (out / name).exists():
            arrays, _ = checkpoint.load(out / name)
            assert all(numpy.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f"), name
            assert name in line or "last" in line
        else:
            assert name not in line


# == (6) other image sizes =======================================================================


def _sized_set(folder, h, w, n_train=64, n_test=40):
    rng = numpy.random.default_rng(0)
    train = (rng.integers(0, 255, (n_train, h, w)), rng.integers(0, 10, n_train))
    test = (rng.integers(0, 255, (n_test, h, w)), rng.integers(0, 10, n_test))
    return write_idx_set(folder, MNIST(*train, *test))


@pytest.mark.parametrize("h, w, head", [(32, 32, "max"), (8, 8, "avg"), (20, 17, "max")])
def test_6_other_image_sizes_train_and_evaluate(tmp_path, capsys, h, w, head):
    folder = _sized_set(tmp_path / "d", h, w)
    out = tmp_path / "o"
    r = run(capsys, "train", "--data-dir", folder, "--out", out, "--epochs", "1", "--head", head, *TINY)
    assert r.code == 0, r
    r = run(capsys, "evaluate", "--checkpoint", out / "last.safetensors", "--data-dir", folder)
    assert r.code == 0, r


def test_6_a_checkpoint_and_data_of_different_image_sizes_are_one_line(tmp_path, capsys, digits, trained):
    from PIL import Image

    folder = _sized_set(tmp_path / "d", 32, 32)
    out = tmp_path / "o"
    assert run(capsys, "train", "--data-dir", folder, "--out", out, "--epochs", "1", *TINY).code == 0
    one_line(run(capsys, "evaluate", "--checkpoint", out / "last.safetensors", "--data-dir", digits), 1,
             "reads 32x32 images", "28x28")
    one_line(run(capsys, "evaluate", "--checkpoint", trained / "last.safetensors", "--data-dir", folder), 1,
             "reads 28x28 images", "32x32")
    one_line(run(capsys, "train", "--resume", out, "--data-dir", digits), 1, "32x32", "28x28")
    Image.fromarray(numpy.zeros((28, 28), numpy.uint8)).save(tmp_path / "z.png")
    one_line(run(capsys, "predict", "--checkpoint", out / "last.safetensors", tmp_path / "z.png"), 1, "32x32")


def test_6_a_cropped_run_reads_central_windows_of_larger_images_and_refuses_smaller(tmp_path, capsys, digits):
    from PIL import Image

    out = tmp_path / "o"
    assert run(capsys, "train", "--data-dir", digits, "--out", out, "--epochs", "1", "--crop", "20", *TINY).code == 0
    summary = json.loads((out / "summary.json").read_text())
    r = run(capsys, "evaluate", "--checkpoint", out / "last.safetensors", "--data-dir", digits, "--json")
    assert r.code == 0 and json.loads(r.out)["test_accuracy"] == summary["test_accuracy"]
    one_line(run(capsys, "evaluate", "--checkpoint", out / "last.safetensors", "--data-dir",
                 _sized_set(tmp_path / "small", 16, 16)), 1, "central 20x20 windows", "16x16")
    one_line(run(capsys, "train", "--resume", out, "--data-dir", _sized_set(tmp_path / "s2", 18, 18)), 1,
             "crop 20 is larger", "18x18")
    digit = numpy.zeros((28, 28), numpy.uint8)
    digit[6:22, 12:16] = 255
    Image.fromarray(digit).save(tmp_path / "one.png")
    r = run(capsys, "predict", "--checkpoint", out / "last.safetensors", tmp_path / "one.png", "--json")
    # The model read the 20x20 centre of the prepared 28x28 field and answered.
    assert r.code in (0, 3) and len(json.loads(r.out)["top3"]) == 3


@pytest.mark.parametrize("crop, says", [("29", "--crop 29 is larger than the data's 28x28 images"),
                                        ("12", "too small")])
def test_6_a_crop_the_data_or_network_cannot_take_is_refused_up_front(tmp_path, capsys, digits, crop, says):
    out = tmp_path / "o"
    one_line(run(capsys, "train", "--data-dir", digits, "--out", out, "--crop", crop, *TINY), 1, says)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("h, w, head", [(8, 8, "max"), (1, 1, "avg"), (28, 5, "max"), (4, 28, "avg")])
def test_6_sizes_the_network_cannot_take_are_refused_up_front(tmp_path, capsys, h, w, head):
    folder = _sized_set(tmp_path / "d", h, w)
    out = tmp_path / "o"
    r = run(capsys, "train", "--data-dir", folder, "--out", out, "--head", head, *TINY)
    one_line(r, 1, f"{h}x{w}", "too small")
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("what", ["no training images", "no test images", "0x28 images"])
def test_6_empty_sets_and_empty_images_are_refused(tmp_path, capsys, what):
    rng = numpy.random.default_rng(0)
    folder = tmp_path / "d"
    n_train, n_test = (0, 40) if what == "no training images" else (64, 0) if what == "no test images" else (64, 40)
    h, w = (0, 28) if what == "0x28 images" else (28, 28)
    write_idx_set(folder, MNIST(rng.integers(0, 255, (n_train, h, w)), rng.integers(0, 10, n_train),
                                rng.integers(0, 255, (n_test, h, w)), rng.integers(0, 10, n_test)))
    one_line(run(capsys, "train", "--data-dir", folder, "--out", tmp_path / "o", *TINY), 1)


@pytest.mark.parametrize("kind", ["directory", "fifo", "device", "symlink loop", "dangling symlink"])
def test_6_a_data_file_that_is_no_file_is_an_error_not_missing(tmp_path, capsys, kind):
    folder = digit_folder(tmp_path / "d", 64, 40)
    target = folder / "train-images-idx3-ubyte"
    (folder / "train-images-idx3-ubyte.gz").unlink()
    if kind == "directory":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "device":
        os.symlink("/dev/zero", target)
    elif kind == "symlink loop":
        os.symlink(target, target)
    else:
        os.symlink(folder / "nowhere", target)
    line = one_line(run(capsys, "train", "--data-dir", folder, "--out", tmp_path / "o", *TINY), 1, str(target))
    assert "missing" not in line


# == (7) output paths ============================================================================


@pytest.mark.parametrize("kind", ["a file", "under a file", "/dev/null", "/proc/self", "unwritable"])
def test_7_a_bad_out_is_refused_before_the_data_is_loaded(tmp_path, capsys, kind):
    a_file = tmp_path / "f.txt"
    a_file.write_text("keep me")
    out = {"a file": a_file, "under a file": a_file / "sub", "/dev/null": Path("/dev/null"),
           "/proc/self": Path("/proc/self"), "unwritable": tmp_path / "ro" / "run"}[kind]
    if kind == "unwritable":
        (tmp_path / "ro").mkdir(mode=0o500)
        if os.access(tmp_path / "ro", os.W_OK):
            pytest.skip("running as a user who may write anywhere")
    # A data folder that does not exist: refusing --out first means it is never looked at.
    one_line(run(capsys, "train", "--data-dir", tmp_path / "no-data", "--out", out, *TINY), 1, str(out))
    assert a_file.read_text() == "keep me"


def test_7_a_full_disk_is_one_line_naming_the_path_and_keeps_the_previous_checkpoint(run_copy, digits, capsys,
                                                                                      monkeypatch):
    before = digest(run_copy)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write_all", full)
    r = run(capsys, "train", "--resume", run_copy / "last.safetensors", "--data-dir", digits, "--epochs", "1",
            "--no-plots")
    assert r.code in (0, 1)  # nothing to do, or a save that failed: either way one line at most
    if r.code == 1:
        one_line(r, 1, "No space left on device", str(run_copy))
    assert digest(run_copy)["last.safetensors"] == before["last.safetensors"]


def test_7_a_full_disk_during_training_is_one_line(tmp_path, digits, capsys, monkeypatch):
    out = tmp_path / "r"

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write_all", full)
    r = run(capsys, "train", "--data-dir", digits, "--out", out, "--epochs", "1", *TINY)
    one_line(r, 1, "No space left on device", "last.safetensors")
    assert not list(out.glob(".*.tmp"))


def test_7_a_stale_temporary_from_a_killed_save_is_removed_by_the_next_save(run_copy, digits, capsys):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = run_copy / f".last.safetensors.{dead.pid}.0badc0de.tmp"
    stale.write_bytes(b"half")
    rewrite(run_copy / "last.safetensors", _config("epochs", 2))
    assert run(capsys, "train", "--resume", run_copy / "last.safetensors", "--data-dir", digits, "--no-plots",
               "--epochs", "2").code in (0, 1)
    assert not stale.exists()


def test_7_a_reader_that_goes_away_ends_the_log_not_the_run(tmp_path, digits):
    """``xpnet train ... | head -1``: the pipe breaks after the first line; the run goes on."""
    out = tmp_path / "r"
    argv = ["train", "--data-dir", digits, "--out", out, "--epochs", "2", *TINY]
    proc = subprocess.Popen([sys.executable, "-m", "xpnet", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            env={**os.environ, "XPNET_THREADS": "1"})
    assert proc.stdout.readline().startswith("data:")
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and err == "", err
    assert checkpoint.load(out / "last.safetensors")[1]["epoch"] == 2


# == (8) messages =================================================================================


def test_8_the_nan_stop_names_no_checkpoint_before_one_exists(tmp_path, digits, capsys):
    out = tmp_path / "r"
    r = run(capsys, "train", "--data-dir", digits, "--out", out, "--epochs", "1", "--lr", "1e30",
            "--schedule", "constant", *TINY)
    line = one_line(r, 1)
    assert not (out / "last.safetensors").exists()
    assert "last.safetensors" not in line and "no checkpoint" in line


# == (9) predict's images (the ux engineer's tests cover the messages; here: memory) ================


def test_9_a_decompression_bomb_costs_no_memory_and_the_other_images_are_answered(trained, tmp_path):
    from PIL import Image
    from _scenes import png_bytes

    good = tmp_path / "good.png"
    Image.fromarray(numpy.pad(numpy.full((16, 4), 255, numpy.uint8), ((6, 6), (12, 12)))).save(good)
    bomb = tmp_path / "bomb.png"  # 30000x30000 one-bit pixels: 112 MB of zeros in a file of a few KB
    bomb.write_bytes(png_bytes(30000, 30000, (bytes(3750) for _ in range(30000)), bit_depth=1))
    r = xpnet("predict", "--checkpoint", trained / "last.safetensors", bomb, good, cwd=tmp_path)
    one_line(r, 1, "bomb.png")
    assert r.out.startswith(str(good)) and r.rss_mb < 300, r


# == (10) flags and environment ======================================================================


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--lr", "inf"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "-1"], "--lr"),
        (["--width", "inf"], "--width"), (["--width", "nan"], "--width"), (["--width", "1e9"], "width"),
        (["--momentum", "1.5"], "--momentum"), (["--momentum", "1"], "--momentum"),
        (["--momentum", "-0.1"], "--momentum"),
        (["--seed", "-1"], "--seed"), (["--weight-decay", "inf"], "--weight-decay"),
        (["--label-smoothing", "nan"], "--label-smoothing"), (["--epochs", "10000000000000000000000"], None),
    ],
)
def test_10_flags_out_of_their_domain_are_one_line(tmp_path, capsys, digits, flags, fragment):
    try:
        code = main(["train", "--data-dir", str(digits), "--out", str(tmp_path / "o"), *TINY, *flags])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    r = Result(code, out, err)
    assert code in (1, 2), r
    one_line(r, code, *([fragment] if fragment else []))
    assert not (tmp_path / "o" / "last.safetensors").exists()


def test_10_sync_bn_outside_mpiexec_is_refused_or_warned_in_one_line(tmp_path, capsys, digits):
    r = run(capsys, "train", "--data-dir", digits, "--out", tmp_path / "o", "--epochs", "1", "--sync-bn", *TINY)
    lines = [line for line in r.err.splitlines() if "sync-bn" in line]
    assert len(lines) == 1 and "Traceback" not in r.err, r


@pytest.mark.parametrize("value", ["100000", "0", "-2", "many"])
def test_10_a_thread_count_beyond_the_machine_is_one_line_and_quick(tmp_path, value):
    t0 = time.monotonic()
    r = xpnet("train", "--epochs", "1", cwd=tmp_path, env={"XPNET_THREADS": value}, timeout=60)
    one_line(r, 2, "XPNET_THREADS")
    assert time.monotonic() - t0 < 30


# == (11) a stored data folder ======================================================================


def test_11_a_stored_data_folder_never_triggers_a_download(run_copy, tmp_path, capsys, monkeypatch):
    from xpnet.data import mnist

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(mnist, "fetch", no_download)
    empty = tmp_path / "etc-like"
    empty.mkdir()
    (empty / "passwd").write_text("root:x:0:0\n")
    rewrite(run_copy / "last.safetensors", _set("data_dir", str(empty)))
    rewrite(run_copy / "last.safetensors", _config("epochs", 2))
    before = sorted(os.listdir(empty))
    line = one_line(run(capsys, "train", "--resume", run_copy / "last.safetensors", "--epochs", "2"), 1, str(empty))
    assert "missing" in line or "data" in line
    assert sorted(os.listdir(empty)) == before
