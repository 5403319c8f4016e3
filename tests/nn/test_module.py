import numpy
import pytest
from _support import assert_close, randn

from xpnet import backend, nn


def _tiny():
    return nn.Sequential(
        {"stem": nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU()),
         "res": nn.Residual(nn.Conv2d(2, 2, 3, padding=1), shortcut=nn.Sequential(nn.Conv2d(2, 2, 1, bias=False))),
         "head": nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3))}
    )


def test_names_follow_the_tree_in_pytorch_order():
    names = [n for n, _ in _tiny().named_parameters()]
    assert names == [
        "stem.0.weight", "stem.0.bias", "stem.1.weight", "stem.1.bias",
        "res.0.weight", "res.0.bias", "res.shortcut.0.weight",
        "head.1.weight", "head.1.bias",
    ]
    keys = list(_tiny().state_dict())
    assert keys[4:7] == ["stem.1.running_mean", "stem.1.running_var", "stem.1.num_batches_tracked"]


def test_parameters_have_float32_data_and_grad_of_the_same_shape():
    for p in _tiny().parameters():
        assert p.data.dtype == p.grad.dtype == numpy.float32
        assert p.data.shape == p.grad.shape


def test_train_and_eval_reach_every_child():
    net = _tiny().eval()
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_state_dict_round_trip_is_a_copy_and_strict(xp):
    a, b = _tiny(), _tiny()
    state = a.state_dict()
    b.load_state_dict(state)
    for k, v in b.state_dict().items():
        numpy.testing.assert_array_equal(v, state[k])
    state["stem.0.weight"][...] = 0  # the dict is a copy, not a view
    assert float(abs(backend.asnumpy(a.stem[0].weight.data)).sum()) > 0
    with pytest.raises(KeyError, match="unexpected"):
        b.load_state_dict({**state, "extra": numpy.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        b.load_state_dict({**state, "head.1.bias": numpy.zeros(4, dtype=numpy.float32)})
    del state["stem.1.num_batches_tracked"]
    b.load_state_dict(state)  # optional counters may be missing


def test_backward_accumulates_into_grad_and_zero_grad_clears(xp, rng):
    lin = nn.Linear(3, 2)
    x, dy = randn(xp, rng, 4, 3), randn(xp, rng, 4, 2)
    lin(x)
    lin.backward(dy)
    once = backend.asnumpy(lin.weight.grad).copy()
    lin(x)
    lin.backward(dy)
    assert_close(lin.weight.grad, 2 * once, rtol=1e-6)
    lin.zero_grad()
    assert float(abs(lin.weight.grad).sum()) == 0.0


def test_residual_backward_is_the_sum_of_both_paths(xp, rng):
    body = nn.Linear(3, 3)
    res = nn.Residual(body)
    x, dy = randn(xp, rng, 2, 3), randn(xp, rng, 2, 3)
    assert_close(res(x), backend.asnumpy(body(x)) + backend.asnumpy(x))
    res(x)
    dx = res.backward(dy)
    assert_close(dx, backend.asnumpy(dy) @ backend.asnumpy(body.weight.data) + backend.asnumpy(dy), rtol=1e-5)
