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
