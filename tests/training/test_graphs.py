"""The train step replayed as a CUDA graph (``training.graphs``) on the fake device, whose
captures record without running and whose replays re-run the recording."""

import numpy
import pytest

from xpnet import backend, nn, optim
from xpnet.models import ResNet9
from xpnet.training.graphs import GraphedForward, GraphError, GraphedStep

K = 5


def _setup(optimizer, seed=0, dropout=0.0):
    rng = numpy.random.default_rng(seed)
    model = ResNet9(width=1 / 16, dropout=dropout, rng=rng)
    if optimizer == "adam":
        opt = optim.Adam(model.named_parameters(), lr=1e-3, weight_decay=5e-4)
    else:
        opt = optim.SGD(model.named_parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    data = numpy.random.default_rng(1)
    # Two full batches' shape, then a last partial batch (a graph of its own), then full again.
    sizes = [6, 6, 6, 4, 6][:K]
    batches = [
        (backend.to_device(data.standard_normal((n, 1, 28, 28)).astype(numpy.float32)),
         backend.to_device(data.integers(0, 10, n)))
        for n in sizes
    ]
    return model, opt, loss_fn, batches


def _lr(k):
    return 0.05 * (1.0 + 0.37 * k)  # a different rate every step


def _eager(optimizer, dropout=0.0):
    model, opt, loss_fn, batches = _setup(optimizer, dropout=dropout)
    losses = []
    for k, (x, y) in enumerate(batches):
        opt.lr = _lr(k)
        opt.zero_grad()
        sums = loss_fn.forward_sums(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()
        losses.append(sums.get())
    return model.state_dict(), losses, opt.steps


def _graphed(optimizer, spoil=False, dropout=0.0):
    model, opt, loss_fn, batches = _setup(optimizer, dropout=dropout)
    step = GraphedStep(model, opt, loss_fn)
    if spoil:  # the scalars of the capture's step stay baked in
        loaded = opt.load_scalars
        opt.load_scalars = lambda n: loaded(n) if n == 1 else None
    losses = [step(x, y, _lr(k)).get() for k, (x, y) in enumerate(batches)]
    return model.state_dict(), losses, opt.steps, step


@pytest.mark.parametrize("optimizer, dropout", [("sgd", 0.0), ("adam", 0.0), ("sgd", 0.5)])
def test_replayed_steps_equal_eager_steps_bit_for_bit(fake_cupy, optimizer, dropout):
    state, losses, steps = _eager(optimizer, dropout)
    state_g, losses_g, steps_g, step = _graphed(optimizer, dropout=dropout)
    assert steps_g == steps == K
    assert len(step.shapes) == 2  # the full batches' graph and the partial batch's
    for a, b in zip(losses, losses_g):
        numpy.testing.assert_array_equal(a, b)
    for name in state:
        numpy.testing.assert_array_equal(state_g[name], state[name], err_msg=name)


def test_a_learning_rate_baked_into_the_graph_is_caught(fake_cupy):
    state, _, _ = _eager("sgd")
    state_g, *_ = _graphed("sgd", spoil=True)
    assert any(not numpy.array_equal(state_g[n], state[n]) for n in state if n.endswith("weight"))


def test_a_replayed_step_is_a_handful_of_host_launches_and_no_sync(fake_cupy):
    model, opt, loss_fn, batches = _setup("adam")
    step = GraphedStep(model, opt, loss_fn)
    x, y = batches[0]
    step(x, y, 0.01)  # warm-up and capture
    before = fake_cupy.snapshot()
    graph_ops = fake_cupy.graph_ops
    step(x, y, 0.02)
    counts = fake_cupy.since(before)
    assert counts["syncs"] == 0 and counts["to_host"] == 0
    assert counts["to_device"] == 1  # the step's scalars
    assert counts["ops"] <= 5  # the scalars, the batch's two copies and the graph
    assert fake_cupy.graph_ops - graph_ops > 100  # the step itself, inside the graph


def test_graphs_need_the_device():
    model, opt, loss_fn, _ = _setup("sgd")
    with pytest.raises(GraphError, match="cupy"):
        GraphedStep(model, opt, loss_fn)


def test_a_replayed_eval_forward_equals_the_eager_one_after_updates(fake_cupy):
    model, opt, loss_fn, batches = _setup("sgd")
    forward = GraphedForward(model)
    for k, (x, y) in enumerate(batches):
        model.eval()
        got = forward(x).get()
        want = model(x).get()
        numpy.testing.assert_array_equal(got, want)
        model.train()  # an update in place between evaluations: the graph reads the new weights
        opt.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()
    assert len(forward.shapes) == 2


def test_xpnet_train_with_cuda_graphs_ends_where_the_eager_run_does(tmp_path, fake_cupy):
    """``xpnet train --backend cupy --cuda-graph``: the same checkpoint, losses and test accuracy
    as the eager run, over two epochs with a partial last batch, dropout and evaluation."""
    from _digits import digit_set, write_idx_set

    from xpnet import checkpoint
    from xpnet.cli import main

    data_dir = tmp_path / "idx"
    write_idx_set(data_dir, digit_set(100, 40, seed=0))
    common = ["train", "--backend", "cupy", "--data-dir", str(data_dir), "--width", "0.0625", "--batch-size", "32",
              "--eval-batch-size", "20", "--epochs", "2", "--no-plots", "--dropout", "0.2", "--optimizer", "adam"]
    syncs = {}
    for run, flags in (("eager", []), ("graph", ["--cuda-graph"])):
        before = fake_cupy.snapshot()
        assert main([*common, "--out", str(tmp_path / run), *flags]) == 0
        syncs[run] = fake_cupy.since(before)["syncs"]
    # 4 steps an epoch (100 images, batches of 32): the eager run reads each step's loss, the
    # graph run each epoch's losses at once; the rest (data, evaluation, checkpoints) alike.
    assert syncs["eager"] - syncs["graph"] == 2 * (4 - 1), syncs
    a, _ = checkpoint.load(tmp_path / "eager" / "last.safetensors")
    b, _ = checkpoint.load(tmp_path / "graph" / "last.safetensors")
    for k in a:
        numpy.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for name in ("losses.csv", "metrics.csv"):
        eager = (tmp_path / "eager" / name).read_text().splitlines()
        graph = (tmp_path / "graph" / name).read_text().splitlines()
        if name == "metrics.csv":  # the epochs' seconds differ
            eager, graph = ([line.split(",")[:5] for line in t] for t in (eager, graph))
        assert eager == graph, name


def test_cuda_graphs_need_the_device_on_the_command_line(capsys):
    from xpnet.cli import main

    assert main(["train", "--cuda-graph", "--epochs", "1"]) != 0
    assert "--backend cupy" in capsys.readouterr().err


def test_bench_times_the_replayed_step(fake_cupy):
    from xpnet.tools import bench

    timed = bench.Timed(bench.bench_config(1 / 16, 8), cuda_graph=True)
    timed.train_step()  # warm-up and capture
    before = fake_cupy.snapshot()
    timed.train_step()
    counts = fake_cupy.since(before)
    assert counts["ops"] <= 5 and counts["syncs"] == 1  # the graph and its copies; the clock's sync
    assert bench.main(["--backend", "numpy", "--cuda-graph", "--no-torch"]) == 2


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_nan_stops_a_graph_run_and_keeps_the_last_good_checkpoint(tmp_path, fake_cupy):
    from _digits import TINY, digit_set

    from xpnet.training.config import TrainConfig, TrainingError
    from xpnet.training.loop import fit

    data = digit_set(64, 20, seed=0)
    fit(TrainConfig(epochs=2, **TINY), data, tmp_path, stop_after=1, plots=False, log=lambda s: None,
        cuda_graph=True)
    before = (tmp_path / "last.safetensors").read_bytes()
    with pytest.raises(TrainingError, match="loss became"):
        fit(TrainConfig(epochs=2, **{**TINY, "lr": 1e30}), data, tmp_path, plots=False, log=lambda s: None,
            cuda_graph=True)
    assert (tmp_path / "last.safetensors").read_bytes() == before


def test_a_graph_run_with_dropout_resumes_a_ctrl_c_inside_an_epoch_exactly(tmp_path, fake_cupy, monkeypatch):
    """Each replay's dropout seeds are drawn on the host before it (``load_seed``): the generator's
    state saved at a Ctrl-C inside an epoch is where the resumed replays draw from."""
    import os
    import signal

    from _digits import TINY, digit_set

    import xpnet.training.loop as loop
    from xpnet import checkpoint
    from xpnet.training.config import TrainConfig

    data = digit_set(96, 20, seed=0)  # 3 batches an epoch
    cfg = TrainConfig(epochs=2, dropout=0.3, **TINY)
    quiet = dict(plots=False, log=lambda s: None, cuda_graph=True)
    loop.fit(cfg, data, tmp_path / "a", **quiet)
    real_step, calls = loop.train_step, {"n": 0}

    def flaky_step(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(*args)

    monkeypatch.setattr(loop, "train_step", flaky_step)
    with pytest.raises(KeyboardInterrupt):
        loop.fit(cfg, data, tmp_path / "b", **quiet)
    monkeypatch.setattr(loop, "train_step", real_step)
    loop.fit(None, data, tmp_path / "b", resume=tmp_path / "b" / "last.safetensors", **quiet)
    a, meta_a = checkpoint.load(tmp_path / "a" / "last.safetensors")
    b, meta_b = checkpoint.load(tmp_path / "b" / "last.safetensors")
    assert meta_a["rng_state"] == meta_b["rng_state"]
    for k in a:
        numpy.testing.assert_array_equal(a[k], b[k], err_msg=k)
