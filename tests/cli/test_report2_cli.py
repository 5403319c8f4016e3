"""The second report's network from the command line: ``xpnet train --preset report2`` a few steps
on xpnet and on its PyTorch twin, then ``evaluate`` and ``predict`` from the checkpoint, and the
flags that belong to the other network refused in one line."""

import json

import numpy
import pytest
from _digits import digit_folder

from xpnet import checkpoint
from xpnet.cli import main
from xpnet.models import build_model

# Two steps of batch 64 at a quarter of the width, evaluated on the 300 synthetic test images.
SMALL = ["--preset", "report2", "--epochs", "1", "--train-subset", "128", "--width", "0.25",
         "--eval-batch-size", "150", "--no-plots"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return digit_folder(tmp_path_factory.mktemp("idx"), 256, 300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("report2")
    assert main(["train", "--data-dir", str(data_dir), "--out", str(out), *SMALL]) == 0
    return out


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_preset_trains_the_reports_network_and_recipe(trained):
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["model_config"] == dict(arch="report2", width=0.25, dropout=0.9, ties="share", init="report",
                                           image_size=[28, 28])
    cfg = summary["config"]
    recipe = (cfg["batch_size"], cfg["lr"], cfg["momentum"], cfg["weight_decay"], cfg["schedule"])
    assert recipe == (64, 6.4e-3, 0.0, 0.0, "constant")
    assert (cfg["inputs"], cfg["augment"], cfg["label_smoothing"]) == ("raw", 0, 0.0)
    arrays, meta = checkpoint.load(trained / "last.safetensors")
    assert meta["step"] == 2 and meta["model_config"]["arch"] == "report2"
    assert "model.res2.0.2.weight" in arrays and not any("running_mean" in k for k in arrays)
    first = build_model(meta["model_config"], 10, numpy.random.default_rng(0)).state_dict()
    moved = [k for k, v in first.items() if not numpy.array_equal(v, arrays[f"model.{k}"])]
    assert "classifier.2.weight" in moved and "conv1.0.weight" in moved


def test_evaluate_and_predict_read_the_checkpoint_with_its_raw_inputs(capsys, trained, data_dir, tmp_path):
    from PIL import Image

    code, out, _ = run(capsys, "evaluate", "--checkpoint", trained / "last.safetensors", "--data-dir", data_dir,
                       "--json")
    assert code == 0
    summary = json.loads((trained / "summary.json").read_text())
    result = json.loads(out)
    assert result["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-9)
    # The loss is the one training measured on raw pixels (standardised ones would give another).
    last = (trained / "metrics.csv").read_text().splitlines()[-1].split(",")
    assert result["test_loss"] == pytest.approx(float(last[3]), rel=1e-6)
    digit = numpy.zeros((28, 28), numpy.uint8)
    digit[6:22, 13:16] = 255
    Image.fromarray(digit).save(tmp_path / "one.png")
    # Two steps leave the model unsure of everything: --min-confidence 0 makes it answer anyway.
    code, out, _ = run(capsys, "predict", "--checkpoint", trained / "best.safetensors", tmp_path / "one.png", "--json",
                       "--min-confidence", "0")
    assert code == 0 and 0 <= json.loads(out)["prediction"] <= 9


def test_the_torch_twin_takes_the_same_steps(capsys, trained, data_dir, tmp_path):
    pytest.importorskip("torch")
    assert run(capsys, "train", "--data-dir", data_dir, "--out", tmp_path, "--framework", "torch", *SMALL)[0] == 0
    ours, meta = checkpoint.load(trained / "last.safetensors")
    theirs, _ = checkpoint.load(tmp_path / "last.safetensors")
    first = build_model(meta["model_config"], 10, numpy.random.default_rng(0)).state_dict()
    for k, w0 in first.items():
        a, b = ours[f"model.{k}"] - w0, theirs[f"model.{k}"] - w0
        assert numpy.linalg.norm(a - b) <= 1e-3 * numpy.linalg.norm(b) + 1e-9, k
    assert numpy.linalg.norm(theirs["model.classifier.2.weight"] - first["classifier.2.weight"]) > 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--arch", "report2", "--head", "avg"], "--head applies to --arch resnet9 only"),
     (["--arch", "report2", "--res-blocks", "3"], "--res-blocks applies to --arch resnet9 only"),
     (["--arch", "report2", "--logit-scale", "0.125"], "--logit-scale applies to --arch resnet9 only"),
     (["--pool-ties", "share"], "--pool-ties applies to --arch report2 only"),
     (["--init", "pytorch"], "--init applies to --arch report2 only"),
     (["--arch", "report2", "--sync-bn"], "no BatchNorm")],
)
def test_flags_of_the_other_network_are_one_line(capsys, data_dir, tmp_path, flags, message):
    code, _, err = run(capsys, "train", "--data-dir", data_dir, "--out", tmp_path / "x", "--epochs", "1", *flags)
    assert code == 1 and message in err and "\n" not in err.strip()
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("flags", [["--arch", "resnet10"], ["--inputs", "minmax"], ["--pool-ties", "random"]])
def test_unknown_choices_are_usage_errors(capsys, flags):
    with pytest.raises(SystemExit) as e:
        main(["train", *flags])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_a_checkpoint_with_unknown_inputs_is_one_line(capsys, trained, data_dir, tmp_path):
    arrays, meta = checkpoint.load(trained / "last.safetensors")
    meta["config"]["inputs"] = "evil"
    checkpoint.save(tmp_path / "bad.safetensors", arrays, meta)
    code, _, err = run(capsys, "evaluate", "--checkpoint", tmp_path / "bad.safetensors", "--data-dir", data_dir)
    assert code == 1 and "config.inputs" in err and "\n" not in err.strip()
