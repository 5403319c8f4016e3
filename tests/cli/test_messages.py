"""What the command line says: usage errors as one line pointing at --help, in the user's words;
help that describes every subcommand with accurate defaults; the hints and the resume forms a user
reaches for; progress lines where there is no terminal."""

import filecmp
import subprocess
import sys

import pytest

from _digits import digit_folder

from xpnet.cli import build_parser, main
from xpnet.data.folder import data_hint
from xpnet.data import DataError
from xpnet.data.mnist import _HELP
from xpnet.training.loop import LineProgress


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["train", "--epochs", "two"], "argument --epochs: must be a positive number of epochs, got 'two'"),
        (["train", "--epochs", "0"], "argument --epochs: must be a positive number of epochs, got 0"),
        (["train", "--epochs", "-1"], "argument --epochs: must be a positive number of epochs, got -1"),
        (["train", "--epochs", "-0.5"], "argument --epochs: must be a positive number of epochs, got -0.5"),
        (["train", "--epochs", "nan"], "argument --epochs: must be a positive number of epochs, got nan"),
        (["train", "--epochs", "inf"], "argument --epochs: must be a positive number of epochs, got inf"),
        (["train", "--epochs", "x"], "argument --epochs: must be a positive number of epochs, got 'x'"),
        (["report", "--epochs", "0"], "argument --epochs: must be a positive number of epochs, got 0"),
        (["train", "--lr", "fast"], "argument --lr: must be a finite positive number, got 'fast'"),
        (["train", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["evaluate", "--batch-size", "x", "--checkpoint", "c"], "must be a positive integer, got 'x'"),
        (["predict", "--checkpoint", "c"], "the following arguments are required: IMAGE"),
        (["predict", "--min-confidence", "2", "--checkpoint", "c", "i"], "must be in [0, 1), got 2"),
        (["bench", "--width", "wide"], "must be a finite positive number, got 'wide'"),
        (["report", "--seeds", "x"], "must be a positive integer, got 'x'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_usage_errors_are_one_line_that_points_at_help(argv, expect, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], err
    prog = "xpnet" if argv[0] == "frobnicate" else f"xpnet {argv[0]}"
    assert lines[0].startswith(f"{prog}: error: ") and lines[0].endswith(f"(see {prog} --help)")
    assert "usage:" not in err and "positive_int" not in err and "_float" not in err


def _help(*argv):
    out = subprocess.run([sys.executable, "-m", "xpnet", *argv, "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return " ".join(out.stdout.split())  # argparse wraps lines where the terminal is narrow


def test_every_subcommand_describes_itself_with_accurate_defaults():
    train = _help("train")
    assert "default: the project's own recipe" in train and "the report's recipe" not in train
    assert "(default: False)" not in train
    evaluate, predict = _help("evaluate"), _help("predict")
    assert "test loss and accuracy of a checkpoint's model on the MNIST test set" in evaluate
    assert "cropped to its ink, scaled into a 20x20 box" in predict
    assert "exit status: 0 every image holds a digit; 3 every image was read and at least one holds no digit" in predict
    assert "(default: 0.5)" in predict
    bench = _help("bench")
    assert "(default: False)" not in bench and "(default: None)" not in bench and "(default: [8, 64, 128])" in bench
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        if name not in ("bench", "report"):  # those two describe themselves in their own modules
            assert p.description, name


def test_a_named_data_folder_is_not_told_to_pass_data_dir(tmp_path):
    with pytest.raises(DataError) as e, data_hint(tmp_path, "--data-dir"):
        raise DataError(f"could not download the files into {tmp_path}; {_HELP}")
    assert str(e.value).endswith(f"copy the four MNIST IDX files into {tmp_path}, the folder --data-dir names")
    assert "pass --data-dir" not in str(e.value)
    with pytest.raises(DataError) as e, data_hint(tmp_path, None):  # the default folder: the hint stays
        raise DataError(f"could not download; {_HELP}")
    assert str(e.value).endswith(_HELP)


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    data = digit_folder(tmp_path_factory.mktemp("bars"), 128, 50)
    out = tmp_path_factory.mktemp("run")
    argv = ["train", "--data-dir", str(data), "--out", str(out), "--epochs", "1", "--width", "0.125",
            "--batch-size", "64", "--no-plots"]
    assert main(argv) == 0
    return out


def test_resume_takes_a_run_folder_and_a_best_that_equals_last(one_epoch, capsys, tmp_path):
    capsys.readouterr()
    assert main(["train", "--resume", str(one_epoch)]) == 0
    assert f"nothing to do: {one_epoch / 'last.safetensors'} already covers every epoch" in capsys.readouterr().out
    assert filecmp.cmp(one_epoch / "best.safetensors", one_epoch / "last.safetensors", shallow=False)
    assert main(["train", "--resume", str(one_epoch / "best.safetensors")]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(["train", "--resume", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"xpnet train: error: --resume {tmp_path}: a folder without a last.safetensors to resume"


def test_progress_without_a_terminal_is_a_line_every_30_seconds():
    now = [0.0]
    lines = []
    bar = LineProgress(100, "epoch 1/4", lines.append, clock=lambda: now[0])
    for i in range(100):
        now[0] += 1.0  # one batch a second
        bar.set_postfix(loss=f"{1 / (i + 1):.4f}", lr="0.1")
        bar.update(1)
    bar.close()
    assert lines == [f"epoch 1/4: batch {n}/100 ({n}%), loss {1 / n:.4f}, lr 0.1, {n} s" for n in (30, 60, 90)]
