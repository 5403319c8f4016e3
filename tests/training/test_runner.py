"""xpnet.training.runner: the one training step that fit runs and every measuring tool times."""

import argparse

import numpy
import pytest
from _digits import TINY, digit_set

from xpnet import checkpoint
from xpnet.data import batches
from xpnet.training import runner as runner_mod
from xpnet.training.config import TrainConfig
from xpnet.training.loop import fit
from xpnet.training.runner import XpnetRunner, build_schedule, epoch_batches, total_steps

FRAMEWORKS = ["xpnet", pytest.param("torch", marks=pytest.mark.skipif(
    pytest.importorskip("importlib.util").find_spec("torch") is None, reason="needs torch"))]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_bench_steps_and_fit_steps_give_identical_weights(tmp_path, framework):
    """Two steps from the same seed: fit's, and bench's runner stepped on fit's batches and rates."""
    from xpnet.tools import bench

    cfg = TrainConfig(epochs=1, train_subset=64, framework=framework, dropout=0.2, **TINY)  # two steps
    data = digit_set(96, 50)
    fit(cfg, data, tmp_path, plots=False, log=lambda s: None)
    arrays, meta = checkpoint.load(tmp_path / "last.safetensors")
    assert meta["step"] == 2

    rng = numpy.random.default_rng(cfg.seed)  # one generator for weights, batches and dropout, as fit's
    timed = bench.Timed(cfg, rng)
    schedule = build_schedule(cfg, 2)
    images, labels = data.train_images[:64], data.train_labels[:64]
    for x, y in batches(images, labels, cfg.batch_size, rng, shuffle=True, augment=cfg.augment):
        timed.x, timed.y, timed.lr = x, y, schedule(timed.runner.steps)
        timed.train_step()
    mine, _ = timed.runner.state()
    assert timed.runner.steps == 2
    for k in arrays:
        if k.startswith("model."):
            numpy.testing.assert_array_equal(mine[k], arrays[k], err_msg=k)


def test_every_measuring_tool_drives_fits_runner(tmp_path, monkeypatch):
    """bench, the launch counter, the memory probe and the scaling worker each run train_step on
    an XpnetRunner built from a TrainConfig (the runner fit builds)."""
    from xpnet.tools import bench, launches, memory, scaling

    seen = []
    real = runner_mod.XpnetRunner.step

    def step(self, lr):
        seen.append((type(self), self.cfg.label_smoothing, self.cfg.nesterov))
        return real(self, lr)

    monkeypatch.setattr(XpnetRunner, "step", step)
    default = TrainConfig()
    expected = (XpnetRunner, default.label_smoothing, default.nesterov)

    assert bench.main(["--smoke", "--no-torch", "--no-memory", "--out", str(tmp_path / "b")]) == 0
    assert seen and set(seen) == {expected}
    seen.clear()
    launches.count_xpnet(1 / 16, 2)
    assert len(seen) == 2 and set(seen) == {expected}
    seen.clear()
    memory.step_peak_bytes(TrainConfig(width=1 / 16), 10, (28, 28), 4)
    assert seen == [expected]
    seen.clear()
    scaling.worker(argparse.Namespace(batch_size=4, width=1 / 16, sync_bn=False, steps=1))
    assert len(seen) == 2 and set(seen) == {expected}


def test_a_non_finite_loss_stops_before_the_update():
    cfg = TrainConfig(**TINY)
    runner = runner_mod.build_runner(cfg, 10, numpy.random.default_rng(0))
    before = {k: p.data.copy() for k, p in runner.model.named_parameters()}
    x = numpy.full((4, 1, 28, 28), numpy.nan, numpy.float32)
    with pytest.raises(runner_mod.NonFiniteLoss) as e:
        runner_mod.train_step(runner, x, numpy.zeros(4, numpy.int64), 0.1)
    assert not numpy.isfinite(e.value.loss) and runner.steps == 0
    for k, p in runner.model.named_parameters():  # the weights (BatchNorm's statistics aside)
        numpy.testing.assert_array_equal(p.data, before[k], err_msg=k)
    assert "loss became nan" in str(e.value)


@pytest.mark.parametrize("crop, size, says", [
    (True, [1, 1], "config.crop must be an integer"),
    (-1, [28, 28], "config.crop must be an integer"),
    ("24", [24, 24], "config.crop must be an integer"),
    (24.0, [24, 24], "config.crop must be an integer"),
    (24, [28, 28], "config.crop 24 disagrees with model_config.image_size"),
    (24, None, "config.crop 24 disagrees with model_config.image_size"),
])
def test_a_stored_crop_is_checked_before_use(crop, size, says):
    model_config = {} if size is None else {"image_size": size}
    with pytest.raises(checkpoint.CheckpointError, match=says):
        runner_mod.stored_crop({"config": {"crop": crop}, "model_config": model_config}, "c.safetensors")
    assert runner_mod.stored_crop({"config": {}, "model_config": {"image_size": [28, 28]}}) == 0
    assert runner_mod.stored_crop({"config": {"crop": 24}, "model_config": {"image_size": [24, 24]}}) == 24


@pytest.mark.parametrize("epochs, per_epoch, total", [
    (4, 469, 1876), (1, 1, 1), (1_000_000, 2**40, 10**6 * 2**40),  # integers: exactly epochs x steps
    (1.3, 469, 610), (1.5, 4, 6), (2.0, 469, 938), (0.5, 3, 2),  # reals: rounded (0.5 x 3 = 1.5 -> 2)
    (1e-9, 469, 1), (0.001, 2, 1),  # a sliver of an epoch is still one step
])
def test_total_steps(epochs, per_epoch, total):
    assert total_steps(epochs, per_epoch) == total
    assert isinstance(total_steps(epochs, per_epoch), int)


def test_epoch_batches_are_whole_epochs_then_the_rest():
    assert [epoch_batches(610, 469, e) for e in range(2)] == [469, 141]
    assert [epoch_batches(8, 4, e) for e in range(2)] == [4, 4]
    assert epoch_batches(1, 469, 0) == 1


def test_a_real_number_of_epochs_lays_the_schedule_over_its_steps():
    """1.3 epochs of 10 steps: every schedule spans 13 steps and ends at the run's last step."""
    from xpnet import optim

    expect = dict(onecycle=optim.OneCycle(0.1, 13, pct_start=0.25), cosine=optim.Cosine(0.1, 13, warmup=5),
                  step=optim.StepLR(0.1, step_size=4, gamma=0.1))
    for name, want in expect.items():
        lr = build_schedule(TrainConfig(epochs=1.3, schedule=name, lr=0.1), 10)
        assert [lr(s) for s in range(14)] == [want(s) for s in range(14)], name
    end = build_schedule(TrainConfig(epochs=1.3, lr=0.1), 10)
    assert end(12) < 1e-5 < end(11)  # one-cycle's last step, at the end of the partial epoch
