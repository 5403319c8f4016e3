"""The training loop on tiny synthetic digits: exact resume, checkpoints, NaN handling."""

import json
import os
import signal

import numpy
import pytest

from _digits import TINY, digit_set

from xpnet import backend, checkpoint
from xpnet.training.config import TrainConfig, TrainingError
from xpnet.training.loop import fit
from xpnet.training.runner import load_model


def _digits(n_train=96, n_test=40, seed=0):
    return digit_set(n_train, n_test, seed=seed)


def _weights(path):
    arrays, meta = checkpoint.load(path)
    return {k: v for k, v in arrays.items()}, meta


def test_two_epochs_equal_one_epoch_plus_resume(tmp_path):
    data = _digits()
    cfg = TrainConfig(epochs=2, dropout=0.3, **TINY)
    fit(cfg, data, tmp_path / "a", plots=False, log=lambda s: None)
    fit(cfg, data, tmp_path / "b", stop_after=1, plots=False, log=lambda s: None)
    _, meta_b = _weights(tmp_path / "b" / "last.safetensors")
    assert meta_b["epoch"] == 1
    fit(None, data, tmp_path / "b", resume=tmp_path / "b" / "last.safetensors", plots=False, log=lambda s: None)
    a, meta_a = _weights(tmp_path / "a" / "last.safetensors")
    b, meta_b = _weights(tmp_path / "b" / "last.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("optim.") for k in a)
    for k in a:
        numpy.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert meta_a["rng_state"] == meta_b["rng_state"] and meta_a["step"] == meta_b["step"]
    hist_a = [{k: r[k] for k in ("train_loss", "test_accuracy")} for r in meta_a["history"]]
    hist_b = [{k: r[k] for k in ("train_loss", "test_accuracy")} for r in meta_b["history"]]
    assert hist_a == hist_b


def _interrupt_in_step(monkeypatch, n, run):
    """``run()`` with Ctrl-C arriving in the middle of its ``n``-th optimizer step."""
    import xpnet.training.runner as train_mod

    real_step = train_mod.optim.SGD.step
    calls = {"n": 0}

    def flaky_step(self):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGINT)
        real_step(self)

    monkeypatch.setattr(train_mod.optim.SGD, "step", flaky_step)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(train_mod.optim.SGD, "step", real_step)


def _assert_same_run(a_path, b_path):
    """Two checkpoints with bit-identical weights, optimizer state, step and generator state."""
    a, meta_a = _weights(a_path)
    b, meta_b = _weights(b_path)
    assert a.keys() == b.keys() and any(k.startswith("optim.") for k in a)
    for k in a:
        numpy.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert meta_a["optimizer_state"] == meta_b["optimizer_state"] and meta_a["step"] == meta_b["step"]
    assert meta_a["rng_state"] == meta_b["rng_state"]


@pytest.mark.parametrize(("dropout", "epochs", "stop_in"), [(0.0, 1, 2), (0.3, 1, 2), (0.3, 2, 5), (0.3, 1.7, 4)])
def test_interrupt_mid_epoch_saves_and_resumes_exactly(tmp_path, monkeypatch, dropout, epochs, stop_in):
    # Dropout draws its masks from the run's generator during the steps: the checkpoint's state
    # after the last batch done, not the epoch's start, is where the resumed steps draw from.
    data = _digits()  # 3 batches an epoch; 1.7 epochs end in the second batch of the second
    cfg = TrainConfig(epochs=epochs, dropout=dropout, **TINY)
    fit(cfg, data, tmp_path / "a", plots=False, log=lambda s: None)
    _interrupt_in_step(monkeypatch, stop_in, lambda: fit(cfg, data, tmp_path / "b", plots=False, log=lambda s: None))
    _, meta = _weights(tmp_path / "b" / "last.safetensors")
    assert (meta["epoch"], meta["batch"]) == divmod(stop_in, 3)
    assert meta["rng_state_now"] != meta["rng_state"]
    fit(None, data, tmp_path / "b", resume=tmp_path / "b" / "last.safetensors", plots=False, log=lambda s: None)
    _assert_same_run(tmp_path / "a" / "last.safetensors", tmp_path / "b" / "last.safetensors")
    _, meta = _weights(tmp_path / "b" / "last.safetensors")
    assert "rng_state_now" not in meta  # an epoch's end: its rng_state is the generator as it is


def test_a_checkpoint_without_the_state_inside_the_epoch_resumes_as_before(tmp_path, monkeypatch):
    # Older checkpoints (no rng_state_now) resume; without dropout, exactly.
    data = _digits()
    cfg = TrainConfig(epochs=1, **TINY)
    fit(cfg, data, tmp_path / "a", plots=False, log=lambda s: None)
    _interrupt_in_step(monkeypatch, 2, lambda: fit(cfg, data, tmp_path / "b", plots=False, log=lambda s: None))
    path = tmp_path / "b" / "last.safetensors"
    arrays, meta = checkpoint.load(path)
    del meta["rng_state_now"]
    checkpoint.save(path, arrays, meta)
    fit(None, data, tmp_path / "b", resume=path, plots=False, log=lambda s: None)
    _assert_same_run(tmp_path / "a" / "last.safetensors", path)


def test_a_cropped_run_resumes_exactly_and_is_evaluated_on_central_windows(tmp_path):
    from xpnet.data import center_crop
    from xpnet.training.runner import evaluate, stored_crop

    data = _digits()
    cfg = TrainConfig(epochs=2, crop=20, **TINY)
    fit(cfg, data, tmp_path / "a", plots=False, log=lambda s: None)
    fit(cfg, data, tmp_path / "b", stop_after=1, plots=False, log=lambda s: None)
    fit(None, data, tmp_path / "b", resume=tmp_path / "b" / "last.safetensors", plots=False, log=lambda s: None)
    a, meta = _weights(tmp_path / "a" / "last.safetensors")
    b, _ = _weights(tmp_path / "b" / "last.safetensors")
    for k in a:
        numpy.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert meta["model_config"]["image_size"] == [20, 20] and stored_crop(meta) == 20
    model, _, _ = load_model(tmp_path / "a" / "last.safetensors")
    _, acc, _, _ = evaluate(model, center_crop(data.test_images, 20), data.test_labels, 50)
    assert acc == meta["history"][-1]["test_accuracy"]


def test_a_crop_larger_than_the_images_is_refused_naming_the_field():
    from xpnet.training.config import ConfigError

    with pytest.raises(ConfigError, match=r"--crop 29 is larger than the data's 28x28 images"):
        TrainConfig(crop=29).for_data((28, 28), flags=True)
    with pytest.raises(ConfigError, match=r"config.crop 9 is larger than the data's 8x30 images"):
        TrainConfig(crop=9).for_data((8, 30))
    assert TrainConfig(crop=24).for_data((28, 30)).image_size == (24, 24)
    assert TrainConfig().for_data((32, 30)).image_size == (32, 30)


def test_outputs_and_learning(tmp_path):
    data = _digits(n_train=300, n_test=100)
    summary = fit(TrainConfig(epochs=3, **TINY), data, tmp_path, log=lambda s: None)
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_loss,train_accuracy,test_loss,test_accuracy,seconds,lr,lr_mean,lr_max"
    assert len(lines) == 4
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["epochs"] == 3 and 0.0 <= on_disk["test_accuracy"] <= 1.0
    assert on_disk["config"]["width"] == TINY["width"]
    assert summary["test_accuracy"] > 0.5  # the bars are easy: well above 10 % chance
    for name in ("last.safetensors", "best.safetensors", "curves.png", "failures.png", "confusion.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    model, _, meta = load_model(tmp_path / "best.safetensors")
    assert meta["best_accuracy"] == max(json.loads((tmp_path / "summary.json").read_text())["best_test_accuracy"], 0)
    assert not model.training


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    data = _digits()
    cfg = TrainConfig(epochs=2, **TINY)
    fit(cfg, data, tmp_path, stop_after=1, plots=False, log=lambda s: None)
    before = (tmp_path / "last.safetensors").read_bytes()
    cfg_nan = TrainConfig(epochs=2, **{**TINY, "lr": 1e30})
    with pytest.raises(TrainingError, match="loss became"):
        fit(cfg_nan, data, tmp_path, plots=False, log=lambda s: None)
    # fit with a fresh config starts over but never writes a checkpoint from a non-finite step
    assert (tmp_path / "last.safetensors").read_bytes() == before


def test_backend_arrays_stay_float32(tmp_path):
    data = _digits()
    model_path = tmp_path / "last.safetensors"
    fit(TrainConfig(epochs=1, **TINY), data, tmp_path, plots=False, log=lambda s: None)
    arrays, _ = checkpoint.load(model_path)
    assert all(v.dtype == numpy.float32 for k, v in arrays.items() if k.endswith("weight"))
    assert backend.name() == "numpy"


def test_first_step_is_called_once(tmp_path):
    calls = []
    cfg = TrainConfig(epochs=2, train_subset=64, **TINY)  # four steps
    fit(cfg, _digits(), tmp_path, plots=False, log=lambda s: None, first_step=lambda: calls.append(1))
    assert calls == [1]


def test_a_real_number_of_epochs_ends_inside_the_last(tmp_path):
    """1.7 epochs of 3 batches: round(5.1) = 5 steps, two epochs (the second of 2 batches), each
    with its row and checkpoint; the schedule ends at the last step; the generator moves on as in
    two whole epochs (the partial one draws its whole shuffle)."""
    data, lines = _digits(), []
    summary = fit(TrainConfig(epochs=1.7, **TINY), data, tmp_path / "a", plots=False, log=lines.append)
    _, meta = _weights(tmp_path / "a" / "last.safetensors")
    assert meta["step"] == 5 and (meta["epoch"], meta["batch"]) == (2, 0) and len(meta["history"]) == 2
    assert len((tmp_path / "a" / "metrics.csv").read_text().splitlines()) == 1 + 2
    assert len((tmp_path / "a" / "losses.csv").read_text().splitlines()) == 1 + 5
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["1/2", "2/2"]
    assert summary["epochs"] == 1.7 and json.loads((tmp_path / "a" / "summary.json").read_text())["epochs"] == 1.7
    assert meta["config"]["epochs"] == 1.7
    from xpnet.optim import OneCycle

    assert meta["history"][-1]["lr"] == OneCycle(TINY["lr"], 5, pct_start=0.25)(4) < 1e-5
    fit(TrainConfig(epochs=2, **TINY), data, tmp_path / "b", plots=False, log=lambda s: None)
    _, whole = _weights(tmp_path / "b" / "last.safetensors")
    assert meta["rng_state"] == whole["rng_state"] and whole["step"] == 6


def _interrupt_at(monkeypatch, step):
    """SGD's ``step``-th update (from 1) raises SIGINT in its middle; -> undo()."""
    import xpnet.training.runner as train_mod

    real_step = train_mod.optim.SGD.step
    calls = {"n": 0}

    def flaky_step(self):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signal.SIGINT)
        real_step(self)

    monkeypatch.setattr(train_mod.optim.SGD, "step", flaky_step)
    return lambda: monkeypatch.setattr(train_mod.optim.SGD, "step", real_step)


def test_interrupt_inside_the_partial_epoch_resumes_exactly(tmp_path, monkeypatch):
    """1.7 epochs of 3 batches: Ctrl-C in step 4 stops inside the partial epoch 2 (steps 4 and 5);
    resumed, the run ends bit for bit where the uninterrupted one does, as does a stop after one
    epoch and its resume."""
    data = _digits()
    cfg = TrainConfig(epochs=1.7, **TINY)  # 5 steps
    fit(cfg, data, tmp_path / "a", plots=False, log=lambda s: None)
    a, meta_a = _weights(tmp_path / "a" / "last.safetensors")
    undo, lines = _interrupt_at(monkeypatch, 4), []
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, data, tmp_path / "b", plots=False, log=lines.append)
    undo()
    _, meta = _weights(tmp_path / "b" / "last.safetensors")
    assert (meta["epoch"], meta["batch"], meta["step"]) == (1, 1, 4)
    assert any("at epoch 2, batch 1/2" in line for line in lines), lines
    fit(None, data, tmp_path / "b", resume=tmp_path / "b" / "last.safetensors", plots=False, log=lambda s: None)
    fit(cfg, data, tmp_path / "c", stop_after=1, plots=False, log=lambda s: None)
    fit(None, data, tmp_path / "c", resume=tmp_path / "c" / "last.safetensors", plots=False, log=lambda s: None)
    for run in ("b", "c"):
        b, meta_b = _weights(tmp_path / run / "last.safetensors")
        assert a.keys() == b.keys() and any(k.startswith("optim.") for k in a)
        for k in a:
            numpy.testing.assert_array_equal(a[k], b[k], err_msg=f"{run}: {k}")
        assert (meta_b["step"], meta_b["rng_state"]) == (5, meta_a["rng_state"])
        assert json.loads((tmp_path / run / "summary.json").read_text())["epochs"] == 1.7
