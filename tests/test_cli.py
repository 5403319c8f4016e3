"""``xpnet train -> evaluate -> predict -> resume`` end to end, and every bad input a user can
give: one line on stderr and a non-zero exit, nothing already saved lost.

Runs on the real MNIST when XPNET_DATA points at it (CI does), else on a synthetic IDX set.
"""

import gzip
import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

from xpnet import checkpoint
from xpnet.cli import main

SMALL = ["--width", "0.125", "--train-subset", "256", "--batch-size", "64", "--eval-batch-size", "250", "--no-plots"]


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(numpy.uint8).tobytes())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    real = os.environ.get("XPNET_DATA")
    if real and Path(real, "t10k-labels-idx1-ubyte.gz").exists():
        return Path(real)
    folder = tmp_path_factory.mktemp("idx")
    rng = numpy.random.default_rng(0)
    for prefix, n in (("train", 512), ("t10k", 300)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 30, (n, 28, 28))
        for i, k in enumerate(labels):
            images[i, 2 * k + 4, 4:24] = 255
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--data-dir", str(data_dir), "--out", str(out), "--epochs", "2", *SMALL]) == 0
    return out


def test_train_writes_metrics_summary_and_checkpoints(trained):
    rows = (trained / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",") == ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds", "lr"]
    assert len(rows) == 3
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["epochs"] == 2 and 0 < summary["test_accuracy"] <= 1 and summary["seconds"] > 0
    assert summary["config"]["train_subset"] == 256
    assert (trained / "last.safetensors").exists() and (trained / "best.safetensors").exists()


def test_evaluate_reports_the_same_accuracy(capsys, trained, data_dir):
    code, out, _ = run(capsys, "evaluate", "--checkpoint", trained / "last.safetensors", "--data-dir", data_dir, "--json")
    assert code == 0
    result = json.loads(out)
    summary = json.loads((trained / "summary.json").read_text())
    assert result["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-9)
    code, out, _ = run(capsys, "evaluate", "--checkpoint", trained / "last.safetensors", "--data-dir", data_dir)
    assert code == 0 and "test accuracy" in out


def test_predict_reads_png_and_jpeg_of_any_size(capsys, trained, tmp_path):
    from PIL import Image

    digit = numpy.zeros((28, 28), numpy.uint8)
    digit[6:22, 13:16] = 255  # a "1", white on black
    Image.fromarray(digit).save(tmp_path / "one.png")
    Image.fromarray(255 - digit).resize((140, 120)).save(tmp_path / "scan.jpg")  # dark ink on paper
    code, out, _ = run(capsys, "predict", "--checkpoint", trained / "best.safetensors",
                       tmp_path / "one.png", tmp_path / "scan.jpg", "--json")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["image"]).name for r in lines] == ["one.png", "scan.jpg"]
    assert all(0 <= r["prediction"] <= 9 and 0 < r["probability"] <= 1 for r in lines)


def test_resume_after_stop_equals_an_uninterrupted_run(capsys, trained, data_dir, tmp_path):
    base = ["--data-dir", data_dir, "--out", tmp_path, "--epochs", "2", *SMALL]
    assert run(capsys, "train", *base, "--stop-after", "1")[0] == 0
    assert run(capsys, "train", "--data-dir", data_dir, "--out", tmp_path, "--resume", tmp_path / "last.safetensors")[0] == 0
    a, _ = checkpoint.load(trained / "last.safetensors")
    b, meta = checkpoint.load(tmp_path / "last.safetensors")
    assert meta["epoch"] == 2
    for k in a:
        numpy.testing.assert_array_equal(a[k], b[k], err_msg=k)
    code, out, _ = run(capsys, "train", "--data-dir", data_dir, "--out", tmp_path, "--resume", tmp_path / "last.safetensors")
    assert code == 0 and "nothing to do" in out


def _one_line_error(code, err, expect_code=1):
    assert code == expect_code
    assert err.strip() and "\n" not in err.strip() and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "flags",
    [["--epochs", "-1"], ["--batch-size", "0"], ["--optimizer", "rmsprop"], ["--lr", "0"], ["--res-blocks", "4"],
     ["--dropout", "1.5"], ["--no-such-flag"]],
)
def test_bad_flags_are_usage_errors(flags, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["train", "--out", str(tmp_path), *flags])
    assert e.value.code == 2


def test_broken_data_file_is_one_line(capsys, tmp_path, data_dir):
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / f"{name}.gz").write_bytes((Path(data_dir) / f"{name}.gz").read_bytes())
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    code, _, err = run(capsys, "evaluate", "--checkpoint", tmp_path / "x.safetensors", "--data-dir", tmp_path)
    _one_line_error(code, err)
    code, _, err = run(capsys, "train", "--data-dir", tmp_path, "--out", tmp_path / "o", *SMALL)
    assert "t10k-labels-idx1-ubyte" in _one_line_error(code, err)


def test_pickled_checkpoint_is_refused_and_never_loaded(capsys, tmp_path, data_dir):
    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(pickle.dumps(Evil()))
    for argv in (["evaluate", "--checkpoint", bad, "--data-dir", data_dir], ["predict", "--checkpoint", bad, bad]):
        code, _, err = run(capsys, *argv)
        assert "never unpickle" in _one_line_error(code, err)
    code, _, err = run(capsys, "train", "--data-dir", data_dir, "--out", tmp_path / "o", "--resume", bad)
    _one_line_error(code, err)
    assert not sentinel.exists()


def test_missing_checkpoint_image_and_gpu_are_one_line(capsys, tmp_path, trained, data_dir):
    code, _, err = run(capsys, "evaluate", "--checkpoint", tmp_path / "nope.safetensors", "--data-dir", data_dir)
    _one_line_error(code, err)
    (tmp_path / "notes.png").write_text("not an image")
    code, _, err = run(capsys, "predict", "--checkpoint", trained / "last.safetensors", tmp_path / "notes.png")
    assert "notes.png" in _one_line_error(code, err)
    code, _, err = run(capsys, "train", "--data-dir", data_dir, "--out", tmp_path / "resumed", "--resume", tmp_path / "none")
    _one_line_error(code, err)
    try:
        import cupy  # noqa: F401

        pytest.skip("CuPy is installed; the no-GPU message is tested in test_backend")
    except ImportError:
        pass
    code, _, err = run(capsys, "train", "--backend", "cupy", "--data-dir", data_dir, "--out", tmp_path / "g", *SMALL)
    assert "CuPy" in _one_line_error(code, err)


def test_console_script_runs(tmp_path):
    exe = Path(sys.executable).with_name("xpnet")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "xpnet"]
    out = subprocess.run([*cmd, "train", "--batch-size", "0"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and "--batch-size" in out.stderr
    out = subprocess.run([*cmd, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout and "evaluate" in out.stdout


def test_presets_set_defaults_and_explicit_flags_win(monkeypatch):
    import xpnet.cli as cli
    from xpnet.train import PRESETS

    seen = {}
    monkeypatch.setattr(cli, "cmd_train", lambda args: seen.update(vars(args)) or 0)
    assert main(["train", "--preset", "fast"]) == 0
    assert seen["width"] == PRESETS["fast"]["width"] and seen["epochs"] == PRESETS["fast"]["epochs"]
    assert main(["train", "--preset", "fast", "--width", "0.75"]) == 0
    assert seen["width"] == 0.75 and seen["epochs"] == PRESETS["fast"]["epochs"]
    assert main(["train"]) == 0
    assert seen["width"] == 1.0 and seen["epochs"] is None


@pytest.mark.parametrize("value", ["abc", "0"])
def test_a_bad_thread_count_is_one_line(monkeypatch, capsys, value):
    from xpnet.functional import parallel

    monkeypatch.setattr(parallel, "_threads", None)  # read afresh, as in a new process
    monkeypatch.setenv("XPNET_THREADS", value)
    assert main(["train", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xpnet: error: XPNET_THREADS") and "\n" not in err
