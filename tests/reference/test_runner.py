"""``xpnet train --framework torch``: the PyTorch twin under fit, against xpnet's own runs.

Same seed, same start: identical initial weights and generator state, identical batches, the same
first-step loss to float32 precision; checkpoints that xpnet reads; exact resume; a missing torch
is one line.
"""

import csv
import json

import numpy
import pytest

pytest.importorskip("torch")

from _digits import TINY, digit_folder, digit_set  # noqa: E402
from _support import run_without_torch  # noqa: E402

from xpnet import checkpoint  # noqa: E402
from xpnet.cli import main  # noqa: E402
from xpnet.reference.runner import TorchRunner  # noqa: E402
from xpnet.training.config import TrainConfig  # noqa: E402
from xpnet.training.loop import fit  # noqa: E402
from xpnet.training.runner import XpnetRunner, build_runner, evaluate, load_model  # noqa: E402

QUIET = dict(plots=False, log=lambda s: None)


def _losses(folder):
    with open(folder / "losses.csv", newline="") as f:
        return numpy.array([float(r["loss"]) for r in csv.DictReader(f)])


def test_same_seed_same_initial_weights_and_generator_state():
    cfg = TrainConfig(dropout=0.3, shortcut="conv", res_blocks=3, head="avg", **TINY)
    rng_x, rng_t = numpy.random.default_rng(7), numpy.random.default_rng(7)
    ours = build_runner(cfg, 10, rng_x)
    twin = build_runner(TrainConfig(**{**vars(cfg), "framework": "torch"}), 10, rng_t)
    assert isinstance(ours, XpnetRunner) and isinstance(twin, TorchRunner)
    a, _ = ours.state()
    b, _ = twin.state()
    model_keys = sorted(k for k in a if k.startswith("model."))
    assert model_keys == sorted(k for k in b if k.startswith("model."))
    for k in model_keys:
        numpy.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert rng_x.bit_generator.state == rng_t.bit_generator.state
    assert ours.parameters == twin.parameters


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_twin_sees_identical_batches_and_the_same_first_loss(tmp_path, monkeypatch, optimizer):
    data = digit_set(128, 40)
    seen = {}

    def recording(cls, key):
        real = cls.forward

        def forward(self, x, y):
            seen.setdefault(key, []).append((numpy.array(x), numpy.array(y)))
            return real(self, x, y)

        monkeypatch.setattr(cls, "forward", forward)

    recording(XpnetRunner, "xpnet")
    recording(TorchRunner, "torch")
    lr = 0.01 if optimizer == "adam" else 0.05
    for fw in ("xpnet", "torch"):
        cfg = TrainConfig(epochs=2, optimizer=optimizer, framework=fw, dropout=0.2, **{**TINY, "lr": lr})
        fit(cfg, data, tmp_path / fw, **QUIET)
    assert len(seen["xpnet"]) == len(seen["torch"]) == 8  # 2 epochs of 4 batches
    for (xa, ya), (xb, yb) in zip(seen["xpnet"], seen["torch"]):
        numpy.testing.assert_array_equal(xa, xb)  # augmented, shuffled, both epochs
        numpy.testing.assert_array_equal(ya, yb)
    la, lb = _losses(tmp_path / "xpnet"), _losses(tmp_path / "torch")
    assert len(la) == len(lb) == 8
    numpy.testing.assert_allclose(la[0], lb[0], rtol=2e-6)  # the first step: float32 rounding only
    numpy.testing.assert_allclose(la[1], lb[1], rtol=2e-5)  # after one update of each optimizer
    # Later steps part slowly: at this tiny width and learning rate, rounding differences grow
    # several-fold per step.
    numpy.testing.assert_allclose(la, lb, rtol=0.05)
    sa = json.loads((tmp_path / "xpnet" / "summary.json").read_text())
    sb = json.loads((tmp_path / "torch" / "summary.json").read_text())
    assert sb["config"]["framework"] == "torch" and sa["config"]["framework"] == "xpnet"
    assert abs(sa["test_accuracy"] - sb["test_accuracy"]) <= 2 / 40


def test_torch_checkpoint_is_read_by_xpnet_and_resumes_exactly(tmp_path):
    data = digit_set(96, 40)
    cfg = TrainConfig(epochs=2, framework="torch", optimizer="adam", **{**TINY, "lr": 0.01})
    summary = fit(cfg, data, tmp_path / "a", **QUIET)
    fit(cfg, data, tmp_path / "b", stop_after=1, **QUIET)
    fit(None, data, tmp_path / "b", resume=tmp_path / "b" / "last.safetensors", **QUIET)
    a, meta = checkpoint.load(tmp_path / "a" / "last.safetensors")
    b, _ = checkpoint.load(tmp_path / "b" / "last.safetensors")
    assert sorted(a) == sorted(b) and any(k.endswith(".exp_avg_sq") for k in a)
    for k in a:
        numpy.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)
    numpy.testing.assert_allclose(_losses(tmp_path / "a"), _losses(tmp_path / "b"), rtol=1e-6)
    assert meta["config"]["framework"] == "torch"
    model, _, _ = load_model(tmp_path / "a" / "last.safetensors")  # an xpnet model
    _, acc, _, _ = evaluate(model, data.test_images, data.test_labels)
    assert abs(acc - summary["test_accuracy"]) <= 1 / 40


def test_twin_with_dropout_resumes_a_ctrl_c_inside_an_epoch(tmp_path, monkeypatch):
    # HostDropout draws from the run's generator during the steps, as xpnet's Dropout does.
    import os
    import signal

    import xpnet.training.loop as loop

    data = digit_set(96, 40)  # 3 batches an epoch
    cfg = TrainConfig(epochs=2, framework="torch", dropout=0.3, **TINY)
    fit(cfg, data, tmp_path / "a", **QUIET)
    real_step, calls = loop.train_step, {"n": 0}

    def flaky_step(*args):
        calls["n"] += 1
        if calls["n"] == 5:  # Ctrl-C in the second batch of the second epoch
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(*args)

    monkeypatch.setattr(loop, "train_step", flaky_step)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, data, tmp_path / "b", **QUIET)
    monkeypatch.setattr(loop, "train_step", real_step)
    _, meta = checkpoint.load(tmp_path / "b" / "last.safetensors")
    assert (meta["epoch"], meta["batch"]) == (1, 2)
    fit(None, data, tmp_path / "b", resume=tmp_path / "b" / "last.safetensors", **QUIET)
    a, meta_a = checkpoint.load(tmp_path / "a" / "last.safetensors")
    b, meta_b = checkpoint.load(tmp_path / "b" / "last.safetensors")
    assert sorted(a) == sorted(b) and meta_a["rng_state"] == meta_b["rng_state"]
    for k in a:
        numpy.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_cli_trains_the_twin_and_evaluate_reads_it(capsys, tmp_path):
    digit_folder(tmp_path, 128, 60)
    out = tmp_path / "run"
    flags = ["--width", "0.125", "--batch-size", "32", "--eval-batch-size", "30", "--epochs", "1", "--no-plots"]
    assert main(["train", "--framework", "torch", "--data-dir", str(tmp_path), "--out", str(out), *flags]) == 0
    summary = json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "best.safetensors"), "--data-dir", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert abs(result["test_accuracy"] - summary["best_test_accuracy"]) <= 1 / 60


def test_missing_torch_is_one_line_naming_the_extra(tmp_path):
    # A fresh interpreter where torch cannot be imported: the core still imports, and asking for
    # the twin gives one line that names the extra.
    out = run_without_torch(["train", "--framework", "torch", "--out", tmp_path / "r"])
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "xpnet[reference]" in lines[0], out.stderr
    assert not (tmp_path / "r").exists()
