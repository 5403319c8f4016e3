"""``xpnet train -> evaluate -> predict -> resume`` end to end, and every bad input a user can
give: one line on stderr and a non-zero exit, nothing already saved lost.

Runs on the real MNIST when XPNET_DATA points at it (CI does), else on a synthetic IDX set.
"""

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

from _digits import digit_folder

from xpnet import checkpoint
from xpnet.cli import main

SMALL = ["--width", "0.125", "--train-subset", "256", "--batch-size", "64", "--eval-batch-size", "250", "--no-plots"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, synthetic_dir):
    real = os.environ.get("XPNET_DATA")
    if real and Path(real, "t10k-labels-idx1-ubyte.gz").exists():
        return Path(real)
    return synthetic_dir


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    """A small IDX set (512 training, 300 test images) whose digits are bars at class-given rows:
    for the tests that train several times and check behaviour, not accuracy."""
    return digit_folder(tmp_path_factory.mktemp("idx"), 512, 300)


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
    assert rows[0].split(",") == ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds",
                                  "lr", "lr_mean", "lr_max"]
    assert len(rows) == 3
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["epochs"] == 2 and 0 < summary["test_accuracy"] <= 1 and summary["seconds"] > 0
    assert summary["config"]["train_subset"] == 256
    assert (trained / "last.safetensors").exists() and (trained / "best.safetensors").exists()


def test_evaluate_reports_the_same_accuracy(capsys, trained, data_dir):
    code, out, _ = run(capsys, "evaluate", "--checkpoint", trained / "last.safetensors", "--data-dir", data_dir,
                       "--json")
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
                       tmp_path / "one.png", tmp_path / "scan.jpg", "--json", "--min-confidence", "0")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["image"]).name for r in lines] == ["one.png", "scan.jpg"]
    assert all(0 <= r["prediction"] <= 9 and 0 < r["probability"] <= 1 for r in lines)


def test_resume_after_stop_equals_an_uninterrupted_run(capsys, trained, data_dir, tmp_path):
    base = ["--data-dir", data_dir, "--out", tmp_path, "--epochs", "2", *SMALL]
    assert run(capsys, "train", *base, "--stop-after", "1")[0] == 0
    assert run(capsys, "train", "--resume", tmp_path / "last.safetensors")[0] == 0
    a, _ = checkpoint.load(trained / "last.safetensors")
    b, meta = checkpoint.load(tmp_path / "last.safetensors")
    assert meta["epoch"] == 2
    for k in a:
        numpy.testing.assert_array_equal(a[k], b[k], err_msg=k)
    code, out, _ = run(capsys, "train", "--resume", tmp_path / "last.safetensors")
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
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
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
    code, _, err = run(capsys, "train", "--data-dir", data_dir, "--out", tmp_path / "resumed",
                       "--resume", tmp_path / "none")
    _one_line_error(code, err)
    # Without CuPy "needs CuPy and a CUDA GPU"; with CuPy (CI installs it) "found no usable CUDA GPU".
    code, _, err = run(capsys, "train", "--backend", "cupy", "--data-dir", data_dir, "--out", tmp_path / "g", *SMALL)
    assert "CUDA GPU" in _one_line_error(code, err)


def test_console_script_runs(tmp_path):
    exe = Path(sys.executable).with_name("xpnet")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "xpnet"]
    out = subprocess.run([*cmd, "train", "--batch-size", "0"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and "--batch-size" in out.stderr
    out = subprocess.run([*cmd, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout and "evaluate" in out.stdout


def test_presets_set_defaults_and_explicit_flags_win(monkeypatch):
    import xpnet.cli.train
    from xpnet.training.config import PRESETS

    seen = {}
    monkeypatch.setattr(xpnet.cli.train, "cmd_train", lambda args: seen.update(vars(args)) or 0)
    assert main(["train", "--preset", "fast"]) == 0
    assert seen["width"] == PRESETS["fast"]["width"] and seen["epochs"] == PRESETS["fast"]["epochs"]
    assert main(["train", "--preset", "fast", "--width", "0.75"]) == 0
    assert seen["width"] == 0.75 and seen["epochs"] == PRESETS["fast"]["epochs"]
    assert main(["train"]) == 0
    assert seen["width"] == 1.0 and seen["epochs"] == 4


@pytest.mark.parametrize("value", ["abc", "0"])
def test_a_bad_thread_count_is_one_line(monkeypatch, capsys, value):
    from xpnet.functional import parallel

    monkeypatch.setattr(parallel, "_threads", None)  # read afresh, as in a new process
    monkeypatch.setenv("XPNET_THREADS", value)
    assert main(["train", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xpnet: error: XPNET_THREADS") and "\n" not in err


# --- the version, the help -------------------------------------------------------------------------


def test_version_is_the_installed_one(capsys):
    from importlib.metadata import version

    import xpnet

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"xpnet {xpnet.__version__}" == f"xpnet {version('xpnet')}"


def _help(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_shows_every_default_and_the_presets_own(capsys):
    text = _help(capsys, "train", "--help")
    for flag, default in [("--dropout DROPOUT", "0.0"), ("--train-subset TRAIN_SUBSET", "0"),
                          ("--seed SEED", "0"), ("--epochs EPOCHS", "4"), ("--width WIDTH", "1.0")]:
        assert re.search(re.escape(flag) + r" [^-]*\(default: " + re.escape(default) + r"\)", text), flag
    assert re.search(r"--stop-after N [^(]*\(default: none", text)
    fast = _help(capsys, "train", "--preset", "fast", "--help")
    from xpnet.training.config import PRESETS

    epochs = re.escape(str(PRESETS["fast"]["epochs"]))
    assert re.search(r"--epochs EPOCHS passes over the training set[^(]*\(default: " + epochs + r"\)", fast)
    assert "--width WIDTH channel multiplier (default: 0.25)" in fast
    assert re.search(r"--logit-scale LOGIT_SCALE [^(]*\(default: 0.125\)", fast)
    bench = _help(capsys, "bench", "--help")
    assert "``" not in bench
    for flag, default in [("--backend {numpy,cupy}", "numpy"), ("--batch-sizes", "[8, 64, 128]"),
                          ("--width WIDTH", "1.0")]:
        assert re.search(re.escape(flag) + r" [^(]*\(default: " + re.escape(default) + r"\)", bench), flag


def _documented_commands(*names):
    """The `xpnet ...` commands of the ```bash blocks of these Markdown files (a line's part after
    `&&`, or after a launcher such as mpiexec, too), comments and line continuations removed."""
    repo = Path(__file__).resolve().parents[2]
    lines = []
    for name in names:
        text = (repo / name).read_text()
        for block in re.findall(r"^```bash\n(.*?)^```", text, re.M | re.S):
            for line in block.replace("\\\n", " ").splitlines():
                for part in line.split("#")[0].split("&&"):
                    # After a launcher or an environment too: mpiexec -n 2 xpnet ..., env ... xpnet ...
                    command = re.search(r"(?:^|\s)((?:\.venv/bin/)?xpnet\s.*)$", part.strip())
                    if command:
                        lines.append(command.group(1))
    return lines


def test_readme_commands_parse(monkeypatch):
    """Every `xpnet ...` command of the command blocks of the README, docs/ and benchmarks/ is a valid
    command line (run here with the commands stubbed; the slow ones are described there, the quick
    ones run in other tests)."""
    import shlex

    import xpnet.cli.evaluate
    import xpnet.cli.predict
    import xpnet.cli.train
    import xpnet.tools.bench
    import xpnet.tools.report

    repo = Path(__file__).resolve().parents[2]
    pages = ["README.md", "benchmarks/README.md", *(str(p.relative_to(repo)) for p in (repo / "docs").glob("*.md"))]
    lines = _documented_commands(*pages)
    assert len(lines) >= 30 and any(line.startswith(".venv/bin/xpnet train") for line in lines)
    seen = []
    for name in ("train", "evaluate", "predict"):
        monkeypatch.setattr(getattr(xpnet.cli, name), f"cmd_{name}", lambda args: seen.append(args.command) or 0)
    monkeypatch.setattr(xpnet.tools.bench, "main", lambda argv: xpnet.tools.bench.build_parser().parse_args(argv) and 0)
    monkeypatch.setattr(xpnet.tools.report, "main",
                        lambda argv: xpnet.tools.report.build_parser().parse_args(argv) and 0)
    for line in lines:
        argv = shlex.split(line.replace("[", "").replace("]", ""))[1:]
        try:
            code = main(argv)
        except SystemExit as e:  # --version
            code = e.code
        assert code == 0, line
    assert {"train", "evaluate", "predict"} <= set(seen)


# --- dependencies ----------------------------------------------------------------------------------


def test_a_missing_dependency_is_one_line_before_any_work(monkeypatch, capsys, tmp_path, synthetic_dir):
    import importlib.util

    from xpnet.cli import deps

    real = importlib.util.find_spec
    monkeypatch.setattr(deps.importlib.util, "find_spec", lambda name: None if name == "matplotlib" else real(name))
    out = tmp_path / "o"
    code, _, err = run(capsys, "train", "--data-dir", synthetic_dir, "--out", out,
                       *[a for a in SMALL if a != "--no-plots"])
    assert "matplotlib" in _one_line_error(code, err) and "pip install xpnet" in err
    assert not out.exists()
    monkeypatch.setattr(deps.importlib.util, "find_spec", lambda name: None if name == "threadpoolctl" else real(name))
    code, _, err = run(capsys, "bench", "--smoke", "--no-torch")
    assert "threadpoolctl" in _one_line_error(code, err)


# --- run folders and resuming ----------------------------------------------------------------------


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A fresh working directory without XPNET_DATA, as a user's shell would be."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("XPNET_DATA", raising=False)
    return cwd


def test_resume_stays_in_its_folder_and_on_its_data(capsys, synthetic_dir, tmp_path, elsewhere):
    run_dir = tmp_path / "run"
    code, out, _ = run(capsys, "train", "--data-dir", synthetic_dir, "--out", run_dir, "--epochs", "2",
                       "--stop-after", "1", *SMALL)
    assert code == 0
    assert re.search(r"data: 256 of \d+ training", out) and "after 1 epoch (" in out
    # From another folder, without --data-dir or XPNET_DATA: the checkpoint knows both.
    code, out, err = run(capsys, "train", "--resume", run_dir / "last.safetensors", "--width", "0.125")
    assert code == 0, err
    assert f"out: {run_dir}" in out and "after 2 epochs" in out
    assert checkpoint.load(run_dir / "last.safetensors")[1]["epoch"] == 2
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 3
    assert os.listdir(elsewhere) == []  # no ./data/mnist, no runs/


def test_resume_refuses_flags_that_change_the_recipe(capsys, trained, tmp_path):
    before = (trained / "last.safetensors").read_bytes()
    code, _, err = run(capsys, "train", "--resume", trained / "last.safetensors", "--width", "0.5",
                       "--batch-size", "64")
    assert "--width 0.5" in _one_line_error(code, err) and "width 0.125" in err
    assert "--batch-size" not in err.split("(")[0]
    code, _, err = run(capsys, "train", "--resume", trained / "last.safetensors", "--preset", "fast")
    assert "--width 0.25" in _one_line_error(code, err)
    assert (trained / "last.safetensors").read_bytes() == before


def test_a_one_cycle_run_is_not_stretched(capsys, trained):
    before = (trained / "metrics.csv").read_text()
    code, _, err = run(capsys, "train", "--resume", trained / "last.safetensors", "--epochs", "3")
    assert "onecycle" in _one_line_error(code, err) and "new run" in err
    code, _, err = run(capsys, "train", "--resume", trained / "last.safetensors", "--epochs", "1")
    assert "fewer than the 2 epochs" in _one_line_error(code, err)
    assert (trained / "metrics.csv").read_text() == before


def test_metrics_show_the_learning_rate_within_each_epoch(trained):
    import csv

    from xpnet.optim import OneCycle

    rows = list(csv.DictReader(open(trained / "metrics.csv")))
    lr, mean, peak = ([float(r[k]) for r in rows] for k in ("lr", "lr_mean", "lr_max"))
    # 256 images in batches of 64 for 2 epochs: the one-cycle schedule of 8 steps, 4 per epoch.
    schedule = [OneCycle(0.1, 8)(s) for s in range(8)]
    for epoch, steps in enumerate((schedule[:4], schedule[4:])):
        assert lr[epoch] == pytest.approx(steps[-1])
        assert mean[epoch] == pytest.approx(sum(steps) / 4) and peak[epoch] == pytest.approx(max(steps))
    # The last value alone would hide the peak of 0.1 within the first epoch.
    assert peak[0] == pytest.approx(0.1) and lr[0] < 0.08 and lr[1] < 1e-5


def test_a_real_number_of_epochs_trains_and_resumes(capsys, synthetic_dir, tmp_path):
    """--epochs 1.5 of 4 batches: 6 steps, the second epoch of 2; said plainly, stored as given;
    --epochs 2.0 is the integer 2."""
    out = tmp_path / "real"
    code, text, err = run(capsys, "train", "--data-dir", synthetic_dir, "--out", out, "--epochs", "1.5", *SMALL)
    assert code == 0, err
    assert "epoch 2/2 " in text and "after 1.5 epochs" in text
    _, meta = checkpoint.load(out / "last.safetensors")
    assert meta["step"] == 6 and meta["config"]["epochs"] == 1.5
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + 2
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1.5
    code, text, _ = run(capsys, "train", "--resume", out, "--epochs", "1.5")
    assert code == 0 and "nothing to do" in text
    code, _, err = run(capsys, "train", "--resume", out, "--epochs", "1.75")
    assert "ended inside epoch 2" in _one_line_error(code, err)
    code, _, err = run(capsys, "train", "--data-dir", synthetic_dir, "--out", tmp_path / "two", "--epochs", "2.0",
                       "--stop-after", "1", *SMALL)
    assert code == 0, err
    _, meta = checkpoint.load(tmp_path / "two" / "last.safetensors")
    assert meta["config"]["epochs"] == 2 and isinstance(meta["config"]["epochs"], int)


def test_a_constant_schedule_run_can_be_extended(capsys, synthetic_dir, tmp_path):
    out = tmp_path / "const"
    base = ["--data-dir", synthetic_dir, "--out", out, "--epochs", "1", "--schedule", "constant", "--lr", "0.02",
            *SMALL]
    assert run(capsys, "train", *base)[0] == 0
    code, out_text, err = run(capsys, "train", "--resume", out / "last.safetensors", "--epochs", "2")
    assert code == 0, err
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert [r.split(",")[-3:] for r in rows] == [["0.02", "0.02", "0.02"]] * 2


def test_new_runs_never_overwrite_another(capsys, trained, synthetic_dir, tmp_path, elsewhere):
    target = tmp_path / "taken"
    target.mkdir()
    for name in ("last.safetensors", "best.safetensors", "metrics.csv", "summary.json"):
        (target / name).write_bytes((trained / name).read_bytes())
    # A best from an earlier epoch than last (a best byte-identical to last would resume).
    early = tmp_path / "early"
    assert run(capsys, "train", "--data-dir", synthetic_dir, "--out", early, "--epochs", "2", "--stop-after", "1",
               *SMALL)[0] == 0
    (target / "best.safetensors").write_bytes((early / "last.safetensors").read_bytes())
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    code, _, err = run(capsys, "train", "--data-dir", synthetic_dir, "--out", target, *SMALL)
    assert "holds another run" in _one_line_error(code, err)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    # Resuming a checkpoint that is not its folder's last would overwrite the later last.
    code, _, err = run(capsys, "train", "--resume", target / "best.safetensors")
    assert "--out NEW_FOLDER" in _one_line_error(code, err)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    code, _, err = run(capsys, "train", "--data-dir", synthetic_dir, "--out", target, "--overwrite", "--epochs", "1",
                       *SMALL)
    assert code == 0, err
    assert json.loads((target / "summary.json").read_text())["epochs"] == 1
    # Without --out, each new run gets its own folder.
    for n in (1, 2):
        code, out, err = run(capsys, "train", "--data-dir", synthetic_dir, "--epochs", "1", *SMALL)
        assert code == 0 and f"out: {Path('runs', f'run-{n}')}" in out, err
    assert sorted(os.listdir(elsewhere / "runs")) == ["run-1", "run-2"]


# --- bad input -------------------------------------------------------------------------------------


def test_a_batch_larger_than_the_training_set_is_refused(capsys, synthetic_dir, tmp_path):
    code, _, err = run(capsys, "train", "--data-dir", synthetic_dir, "--out", tmp_path / "a", "--batch-size", "100000")
    assert "exceeds the" in _one_line_error(code, err)
    code, _, err = run(capsys, "train", "--data-dir", synthetic_dir, "--out", tmp_path / "b", "--train-subset", "5")
    assert "--batch-size 128 exceeds the 5 training images of --train-subset 5" in _one_line_error(code, err)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_batch_that_will_not_fit_in_memory_is_refused(capsys, synthetic_dir, tmp_path, monkeypatch):
    from xpnet.tools import memory

    small = [a for a in SMALL if a not in ("--batch-size", "64")]
    monkeypatch.setattr(memory, "available_bytes", lambda: 2**20)
    code, _, err = run(capsys, "train", "--data-dir", synthetic_dir, "--out", tmp_path / "a", "--batch-size", "200",
                       *small)
    assert "GiB" in _one_line_error(code, err) and "smaller batch" in err
    assert not (tmp_path / "a").exists()
    from xpnet.training.config import TrainConfig

    need = memory.estimate_step_bytes(TrainConfig(width=0.125), 10, (28, 28), 200)
    monkeypatch.setattr(memory, "available_bytes", lambda: int(need * 1.1))
    code, _, err = run(capsys, "train", "--data-dir", synthetic_dir, "--out", tmp_path / "b", "--batch-size", "200",
                       "--epochs", "1", *small)
    assert code == 0 and err.startswith("xpnet train: warning:") and "GiB" in err


def test_a_named_data_folder_must_exist(capsys, tmp_path, monkeypatch, trained):
    typo = tmp_path / "mnsit"
    code, _, err = run(capsys, "train", "--data-dir", typo, "--out", tmp_path / "o", *SMALL)
    assert "no such folder" in _one_line_error(code, err)
    code, _, err = run(capsys, "evaluate", "--checkpoint", trained / "last.safetensors", "--data-dir", typo)
    assert "no such folder" in _one_line_error(code, err)
    # The report follows the same rule: a typo is refused, not created and downloaded into.
    code, _, err = run(capsys, "report", "--quick", "--data-dir", typo, "--out", tmp_path / "r")
    assert "--data-dir" in _one_line_error(code, err) and "no such folder" in err
    monkeypatch.setenv("XPNET_DATA", str(typo))
    code, _, err = run(capsys, "train", "--out", tmp_path / "o", *SMALL)
    assert "$XPNET_DATA" in _one_line_error(code, err)
    assert not typo.exists() and not (tmp_path / "o").exists()


def test_resume_whose_data_folder_is_gone_says_pass_data_dir(capsys, trained, tmp_path, data_dir):
    copy = tmp_path / "copy"
    copy.mkdir()
    arrays, meta = checkpoint.load(trained / "last.safetensors")
    checkpoint.save(copy / "last.safetensors", arrays, {**meta, "data_dir": str(tmp_path / "gone")})
    code, _, err = run(capsys, "train", "--resume", copy / "last.safetensors", "--epochs", "2")
    assert "no such folder; pass --data-dir" in _one_line_error(code, err)
    code, out, err = run(capsys, "train", "--resume", copy / "last.safetensors", "--data-dir", data_dir)
    assert code == 0 and "nothing to do" in out, err


def test_evaluate_needs_only_the_test_files(capsys, trained, data_dir, tmp_path):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes((Path(data_dir) / name).read_bytes())
    code, out, err = run(capsys, "evaluate", "--checkpoint", trained / "last.safetensors", "--data-dir", tmp_path,
                         "--json")
    assert code == 0, err
    summary = json.loads((trained / "summary.json").read_text())
    assert json.loads(out)["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-9)
    assert sorted(os.listdir(tmp_path)) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_predict_answers_for_the_good_images_when_one_is_missing(capsys, trained, tmp_path):
    from PIL import Image

    digit = numpy.zeros((28, 28), numpy.uint8)
    digit[6:22, 13:16] = 255
    Image.fromarray(digit).save(tmp_path / "one.png")
    code, out, err = run(capsys, "predict", "--checkpoint", trained / "best.safetensors",
                         tmp_path / "one.png", tmp_path / "missing.png")
    assert "missing.png" in _one_line_error(code, err) and "one.png" not in err
    assert out.startswith(f"{tmp_path / 'one.png'}: ") and len(out.splitlines()) == 1


def test_tests_find_the_shared_mnist_beside_the_repository(tmp_path):
    from conftest import shared_mnist

    repo = tmp_path / "xpnet"
    repo.mkdir()
    assert shared_mnist(repo) is None
    (tmp_path / "shared" / "data" / "mnist").mkdir(parents=True)
    assert shared_mnist(repo) == tmp_path / "shared" / "data" / "mnist"


class _FakeHelper:
    """Stands in for ``jit.compile_ahead``'s helper process: counts its start and stops."""

    def __init__(self):
        self.started, self.stops = 0, 0

    def start(self, *args, **kwargs):
        self.started += 1
        return self

    def stop(self):
        self.stops += 1
        return []


def test_train_starts_the_compile_helper_and_stops_it_after_the_first_step(capsys, tmp_path, synthetic_dir,
                                                                            monkeypatch):
    from xpnet.functional import jit
    from xpnet.training import loop

    fake = _FakeHelper()
    monkeypatch.setattr(jit, "compile_ahead", fake.start)
    steps, real_step = [], loop.train_step

    def step(*args):
        steps.append(fake.stops)  # how many stops had come before each step
        return real_step(*args)

    monkeypatch.setattr(loop, "train_step", step)
    code, _, _ = run(capsys, "train", "--data-dir", synthetic_dir, "--out", tmp_path / "a", "--epochs", "1", *SMALL)
    assert code == 0 and fake.started == 1
    assert steps[:2] == [0, 1] and fake.stops >= 1  # stopped after the first step, before the second

    # A run that fails after the helper started (its data unreadable) stops it too.
    fake.stops = 0
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (tmp_path / f"{name}.gz").write_bytes((Path(synthetic_dir) / f"{name}.gz").read_bytes())
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    code, _, err = run(capsys, "train", "--data-dir", tmp_path, "--out", tmp_path / "b", *SMALL)
    _one_line_error(code, err)
    assert fake.started == 2 and fake.stops == 1
