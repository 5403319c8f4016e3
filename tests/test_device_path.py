"""The whole CuPy path on the strict fake device (``xpnet.testing.fakecupy``): a train step
against NumPy, the host-synchronisation and launch budgets, ``xpnet train -> resume -> evaluate``,
host arrays leaking into device code, and running out of device memory."""

import json

import numpy
import pytest

from _digits import digit_set, write_idx_set

from xpnet import backend, nn, optim
from xpnet import functional as F
from xpnet.cli import main
from xpnet.functional import parallel
from xpnet.models import ResNet9
from xpnet.testing import fakecupy
from xpnet.training.config import TrainConfig
from xpnet.training.loop import fit


def _model(batch=6, rng_seed=0, **kwargs):
    """A small ResNet-9, its optimizer and loss, and one batch, on the current backend."""
    rng = numpy.random.default_rng(rng_seed)
    model = ResNet9(rng=rng, **{"width": 1 / 16, **kwargs})
    opt = optim.SGD(model.named_parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(numpy.float32)
    y = rng.integers(0, 10, len(x))
    return model, opt, nn.CrossEntropyLoss(label_smoothing=0.1), backend.to_device(x), backend.to_device(y)


def _step(model, opt, loss_fn, x, y):
    opt.zero_grad()
    loss = loss_fn(model(x), y)
    model.backward(loss_fn.backward())
    opt.step()
    return loss


def _counted_step(counts, **kwargs):
    """Counts of the second train step of a fresh model (the first fills the workspace)."""
    model, opt, loss_fn, x, y = _model(**kwargs)
    _step(model, opt, loss_fn, x, y)
    before = counts.snapshot()
    _step(model, opt, loss_fn, x, y)
    return counts.since(before)


def test_train_and_eval_steps_match_numpy():
    results = {}
    for name in ("numpy", "fake-cupy"):
        with fakecupy.installed(), backend.using("cupy" if name == "fake-cupy" else "numpy"):
            model, opt, loss_fn, x, y = _model()
            losses = [_step(model, opt, loss_fn, x, y) for _ in range(2)]
            grads = {k: backend.asnumpy(p.grad) for k, p in model.named_parameters()}
            model.eval()
            logits = backend.asnumpy(model(x))
            state = model.state_dict()
        results[name] = losses, grads, logits, state
    (l0, g0, z0, s0), (l1, g1, z1, s1) = results["numpy"], results["fake-cupy"]
    numpy.testing.assert_allclose(l1, l0, rtol=1e-5)
    for k in g0:
        numpy.testing.assert_allclose(g1[k], g0[k], rtol=1e-3, atol=1e-5, err_msg=k)
    for k in s0:
        numpy.testing.assert_allclose(s1[k], s0[k], rtol=1e-4, atol=1e-6, err_msg=k)
    numpy.testing.assert_allclose(z1, z0, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "variant",
    [{}, dict(res_blocks=3), dict(shortcut="conv", head="avg", dropout=0.5)],
    ids=["default", "res_blocks=3", "conv-avg-dropout"],
)
def test_a_train_step_syncs_once_copies_nothing_and_stays_float32(fake_cupy, variant):
    delta = _counted_step(fake_cupy, **variant)
    assert delta["syncs"] == 1, fake_cupy.by_name  # the loss, for the log
    assert delta["to_device"] == 0 and delta["to_host"] == 1
    assert delta["float64"] == 0, fake_cupy.float64_names


def test_launches_do_not_grow_with_batch_or_width(fake_cupy):
    """No Python loop over images or channels on the device path: the launch count of a step
    is the same at any batch size and width (the device runs every layer by im2col; the
    full-width counts are held by the budget test below)."""
    ops = {(b, w): _counted_step(fake_cupy, batch=b, width=w)["ops"]
           for b, w in ((2, 1 / 16), (9, 1 / 16), (9, 1 / 10))}
    assert len(set(ops.values())) == 1, ops


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_full_width_step_keeps_the_launch_budget(optimizer):
    """The budget of issue 22: at most 150 launches per train step at full width (PyTorch's
    twin: about 110-160) and 60 per eval step, with one host read (the loss, for the log)."""
    from xpnet.tools import launches

    counts = launches.count_xpnet(1.0, 8, optimizer=optimizer)
    assert counts["train"]["ops"] <= 150, counts["train_by_name"]
    assert counts["eval"]["ops"] <= 60, counts["eval"]
    assert counts["train"]["syncs"] == 1 and counts["eval"]["syncs"] == 0


def test_chunks_and_threads_step_aside_on_the_device(fake_cupy):
    cp = backend.xp()
    previous = parallel.set_threads(4)
    try:
        assert parallel.workers(cp) == 1
        assert parallel.chunk_size(cp, 128, 10 << 20, 1 << 20) == 128
        seen = []
        parallel.for_chunks(cp, 10, 3, lambda t, n0, n1: seen.append((t, n0, n1)))
        assert {t for t, _, _ in seen} == {0}
    finally:
        parallel.set_threads(previous)


def test_host_arrays_leaking_into_device_code_fail_loudly(fake_cupy):
    cp = backend.xp()
    x = cp.ones((2, 3, 8, 8), dtype=numpy.float32)
    w_host = numpy.ones((4, 3, 3, 3), dtype=numpy.float32)
    with pytest.raises(backend.BackendError, match="mixed NumPy and CuPy"):
        F.conv2d_forward(x, w_host)
    model, opt, loss_fn, xd, yd = _model()
    model.classifier[-1].bias.data = numpy.zeros(10, dtype=numpy.float32)  # a host parameter
    with pytest.raises(TypeError, match="numpy.ndarray"):
        _step(model, opt, loss_fn, xd, yd)


def _digits(n_train, n_test=40, seed=0):
    return digit_set(n_train, n_test, seed=seed)


def test_fit_syncs_once_per_training_step(tmp_path, fake_cupy):
    """Two runs that differ only in their number of training steps: everything else (the test
    set's evaluation, checkpoints, metrics) costs the same in both, so the difference is the
    steps' own cost."""
    cfg = dict(epochs=1, width=1 / 16, batch_size=8, augment=1, eval_batch_size=20)
    totals = {}
    for steps in (2, 5):
        before = fake_cupy.snapshot()
        fit(TrainConfig(train_subset=8 * steps, **cfg), _digits(40), tmp_path / str(steps), plots=False,
            log=lambda s: None)
        totals[steps] = fake_cupy.since(before)
    per_step = {k: (totals[5][k] - totals[2][k]) / 3 for k in totals[2]}
    assert per_step["syncs"] <= 1 and per_step["to_device"] == 0 and per_step["float64"] == 0, per_step


def test_train_resume_evaluate_on_the_device(tmp_path, capsys, fake_cupy):
    """``xpnet train --backend cupy``, interrupted after an epoch and resumed, ends where an
    uninterrupted run does; ``xpnet evaluate`` on the device reads its checkpoint back."""
    data_dir = tmp_path / "idx"
    write_idx_set(data_dir, _digits(96, 40))
    common = ["--backend", "cupy", "--data-dir", str(data_dir), "--width", "0.0625", "--batch-size", "32",
              "--eval-batch-size", "20", "--epochs", "2", "--no-plots", "--dropout", "0.2"]
    assert main(["train", "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["train", "--out", str(tmp_path / "b"), "--stop-after", "1", *common]) == 0
    assert main(["train", "--backend", "cupy", "--data-dir", str(data_dir), "--out", str(tmp_path / "b"),
                 "--resume", str(tmp_path / "b" / "last.safetensors"), "--no-plots"]) == 0
    from xpnet import checkpoint

    a, meta_a = checkpoint.load(tmp_path / "a" / "last.safetensors")
    b, meta_b = checkpoint.load(tmp_path / "b" / "last.safetensors")
    assert meta_a["backend"] == "cupy" and meta_a["epoch"] == 2
    for k in a:
        numpy.testing.assert_array_equal(a[k], b[k], err_msg=k)
    capsys.readouterr()
    assert main(["evaluate", "--backend", "cupy", "--checkpoint", str(tmp_path / "a" / "last.safetensors"),
                 "--data-dir", str(data_dir), "--batch-size", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert result["test_accuracy"] == pytest.approx(summary["test_accuracy"])


def test_out_of_device_memory_is_one_line(tmp_path, capsys, fake_cupy):
    data_dir = tmp_path / "idx"
    write_idx_set(data_dir, _digits(64, 20))
    backend.xp().get_default_memory_pool().set_limit(size=64 << 10)
    code = main(["train", "--backend", "cupy", "--data-dir", str(data_dir), "--out", str(tmp_path / "o"),
                 "--width", "0.0625", "--batch-size", "32", "--no-plots"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "ran out of memory" in err and "--batch-size" in err


def test_cupy_installed_without_a_gpu_is_one_clear_error(monkeypatch):
    with fakecupy.installed() as dev:
        def no_device():
            raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

        monkeypatch.setattr(dev.cuda.runtime, "getDeviceCount", no_device)
        with pytest.raises(backend.BackendError, match="no usable CUDA GPU"):
            backend.use("cupy")
    assert backend.name() == "numpy"


def test_device_dropout_samples_are_uniform_and_cost_two_launches(fake_cupy):
    g = numpy.random.default_rng(3)
    state = g.bit_generator.state
    before = fake_cupy.snapshot()
    u = backend.uniform(g, (200, 500))
    assert fake_cupy.since(before)["ops"] == 2 and "random.default_rng" not in fake_cupy.by_name
    g.bit_generator.state = state
    h = backend.asnumpy(u)
    numpy.testing.assert_array_equal(backend.asnumpy(backend.uniform(g, (200, 500))), h)
    assert h.dtype == numpy.float32 and 0.0 <= h.min() and h.max() < 1.0
    counts, _ = numpy.histogram(h, bins=10, range=(0, 1))
    assert numpy.all(numpy.abs(counts - 10_000) < 500), counts  # about 5 standard deviations
    assert abs(numpy.corrcoef(h.ravel()[:-1], h.ravel()[1:])[0, 1]) < 0.01


def test_every_stage_returns_channels_last_memory_on_the_device(fake_cupy):
    """The fake device allocates ufunc results in C order, as CuPy does, so a stage that builds
    its output with a bare ufunc (a residual sum) would hand NCHW memory to the next one."""
    model, _, _, x, _ = _model(batch=3, shortcut="conv")
    for mode in (model.train, model.eval):
        mode()
        h = x
        for name, stage in model._modules.items():
            h = stage(h)
            if h.ndim == 4:
                assert h.transpose(0, 2, 3, 1).flags.c_contiguous, (name, mode.__name__)


def test_out_of_range_labels_are_counted_on_the_device_and_read_once(fake_cupy):
    loss_fn = nn.CrossEntropyLoss()
    logits = backend.to_device(numpy.zeros((4, 3), dtype=numpy.float32))
    before = fake_cupy.snapshot()
    for labels in ([0, 1, 3, 2], [-1, 1, 2, 2], [0, 1, 2, 2]):
        loss_fn(logits, backend.to_device(numpy.array(labels)))
    spent = fake_cupy.since(before)
    loss_fn(logits, backend.to_device(numpy.array([0, 1, 2, 2])))
    plain = fake_cupy.since(before)
    # The count adds no host sync to a step (each forward's own syncs are the loss's).
    assert spent["syncs"] == 3 * (plain["syncs"] - spent["syncs"])
    before = fake_cupy.snapshot()
    assert loss_fn.out_of_range_labels() == 2
    assert fake_cupy.since(before)["syncs"] == 1
    assert loss_fn.out_of_range_labels() == 0


def test_evaluate_refuses_labels_outside_the_models_classes(fake_cupy):
    from xpnet.training.runner import evaluate

    model = ResNet9(width=0.1, num_classes=3, rng=numpy.random.default_rng(0))
    images = numpy.zeros((6, 28, 28), dtype=numpy.uint8)
    with pytest.raises(F.LabelError, match="outside"):
        evaluate(model, images, numpy.array([0, 1, 2, 3, 0, 1]), batch_size=3)
