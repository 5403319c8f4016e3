"""The second report's network against its PyTorch twin and finite differences: keys, logits,
every gradient, in train and eval mode, with either max-pool tie rule."""

import numpy
import pytest
from _support import assert_close

from xpnet import backend, nn
from xpnet.gradient_check import check_module, to_float64
from xpnet.models import Report2Net

torch = pytest.importorskip("torch")
from xpnet.reference import TorchReport2Net, to_torch_state  # noqa: E402


def test_layout_parameters_and_keys():
    net = Report2Net(rng=0)
    # 4*9+4 + 16*36+16 + 2*(16*144+16) + 32*144+32 + 64*288+64 + 2*(64*576+64) + 3136*10+10
    assert sum(p.data.size for p in net.parameters()) == 133_634
    twin = TorchReport2Net()
    ours = net.state_dict()
    assert list(ours) == list(twin.state_dict())
    for k, v in twin.state_dict().items():
        assert ours[k].shape == tuple(v.shape), k
    assert list(ours)[4:8] == ["res1.0.0.weight", "res1.0.0.bias", "res1.0.2.weight", "res1.0.2.bias"]
    assert list(ours)[-2:] == ["classifier.2.weight", "classifier.2.bias"]
    y = net(numpy.zeros((2, 1, 28, 28), dtype=numpy.float32))
    assert y.shape == (2, 10) and backend.asnumpy(y).dtype == numpy.float32


def test_initialisation_is_the_reports():
    state = Report2Net(rng=0).state_dict()
    weights = numpy.concatenate([v.ravel() for k, v in state.items() if k.endswith("weight")])
    assert abs(weights.std() - 0.01) < 5e-4 and abs(weights.mean()) < 2e-4
    assert all(not v.any() for k, v in state.items() if k.endswith("bias"))
    # The same seed gives the same weights, another seed others.
    numpy.testing.assert_array_equal(state["res2.0.2.weight"], Report2Net(rng=0).state_dict()["res2.0.2.weight"])
    assert not numpy.array_equal(state["res2.0.2.weight"], Report2Net(rng=1).state_dict()["res2.0.2.weight"])


def test_pytorch_initialisation_is_the_layers_own():
    state = Report2Net(rng=0, init="pytorch").state_dict()
    w = state["res2.0.0.weight"]
    bound = 1 / (64 * 9) ** 0.5
    assert abs(w).max() <= bound and w.std() > 0.5 * bound / 3**0.5
    assert state["conv1.0.bias"].any()
    numpy.testing.assert_array_equal(w, Report2Net(rng=0, init="pytorch").state_dict()["res2.0.0.weight"])


def test_bad_arguments_are_rejected():
    for bad in (dict(ties="random"), dict(image_size=(3, 28)), dict(dropout=1.0), dict(channels=(4, 16)),
                dict(init="zeros")):
        with pytest.raises(ValueError):
            Report2Net(**bad)


def test_width_scales_the_channels():
    net = Report2Net(width=0.5, rng=0)
    twin = TorchReport2Net(width=0.5)
    theirs = {k: tuple(v.shape) for k, v in twin.state_dict().items()}
    assert {k: v.shape for k, v in net.state_dict().items()} == theirs
    assert net.conv1[0].weight.shape == (2, 1, 3, 3) and net.classifier[-1].weight.shape == (10, 32 * 7 * 7)


def test_other_image_sizes_match_the_twin():
    net = to_float64(Report2Net(image_size=(18, 31), dropout=0.0, rng=0))
    twin = TorchReport2Net(image_size=(18, 31), dropout=0.0).double()
    twin.load_state_dict(to_torch_state(net.state_dict()))
    x = numpy.random.default_rng(0).standard_normal((2, 1, 18, 31)) * 100
    assert_close(net(x), twin(torch.from_numpy(x)).detach().numpy(), rtol=1e-7, atol=1e-12)
    assert net.classifier[1].weight.shape == (10, 64 * 4 * 7)


def _pair(ties, float64, seed=0):
    # The report's 0.01 weights make the logits tiny; biases and a wider spread give every
    # stage values well away from zero, so the comparison tests something.
    net = Report2Net(rng=seed, ties=ties, dropout=0.0)
    rng = numpy.random.default_rng(seed + 10)
    for name, p in net.named_parameters():
        fan_in = int(numpy.prod(p.data.shape[1:])) if p.data.ndim > 1 else 1
        p.data[...] = backend.to_device(rng.standard_normal(p.data.shape).astype(p.data.dtype) * 1.5 / fan_in**0.5)
    twin = TorchReport2Net(ties=ties, dropout=0.0)
    twin.load_state_dict(to_torch_state(net.state_dict()))
    if float64:
        return to_float64(net), twin.double()
    return net, twin


@pytest.mark.parametrize(("ties", "float64"), [("first", True), ("share", True), ("first", False)])
def test_train_step_matches_the_twin(xp, ties, float64):
    net, twin = _pair(ties, float64)
    dtype = numpy.float64 if float64 else numpy.float32
    rtol = 1e-7 if float64 else 1e-3
    rng = numpy.random.default_rng(0)
    # Raw 0-255 pixels, as the report feeds them; integer values and ReLU zeros make max-pool ties.
    x = rng.integers(0, 256, (4, 1, 28, 28)).astype(dtype)
    x[:, :, :6] = 0
    labels = rng.integers(0, 10, 4)
    loss_fn = nn.CrossEntropyLoss()
    logits = net(xp.asarray(x / 255))
    loss = loss_fn(logits, xp.asarray(labels))
    net.zero_grad()
    net.backward(loss_fn.backward())

    tl = twin(torch.from_numpy(x / 255))
    tloss = torch.nn.functional.cross_entropy(tl, torch.from_numpy(labels))
    tloss.backward()
    assert logits.dtype == dtype
    assert float(numpy.abs(tl.detach().numpy()).max()) > 0.1
    assert_close(logits, tl.detach().numpy(), rtol=rtol, atol=rtol, what="logits")
    assert abs(loss - tloss.item()) < rtol * 10
    grads = {k: v.grad.numpy() for k, v in twin.named_parameters()}
    scale = max(float(numpy.abs(g).max()) for g in grads.values())
    for name, p in net.named_parameters():
        assert float(numpy.abs(grads[name]).max()) > 0, name
        if float64:
            assert_close(p.grad, grads[name], rtol=rtol, atol=1e-9 * scale, what=name)
        else:
            err = numpy.linalg.norm(backend.asnumpy(p.grad) - grads[name])
            assert err <= 1e-2 * numpy.linalg.norm(grads[name]) + 3e-3 * scale, name

    net.eval(), twin.eval()
    x2 = rng.standard_normal((3, 1, 28, 28)).astype(dtype)
    assert_close(net(xp.asarray(x2)), twin(torch.from_numpy(x2)).detach().numpy(), rtol=rtol, atol=rtol, what="eval")


def test_tie_rules_differ_where_windows_tie():
    # An all-zero top band: its pool windows tie, and the tie rule changes conv1's bias gradient.
    grads = {}
    for ties in ("first", "share"):
        net, twin = _pair(ties, float64=True)
        x = numpy.zeros((2, 1, 28, 28))
        x[:, :, 14:] = numpy.random.default_rng(1).random((2, 1, 14, 28))
        loss_fn = nn.CrossEntropyLoss()
        loss_fn(net(x), numpy.array([3, 7]))
        net.zero_grad()
        net.backward(loss_fn.backward())
        grads[ties] = {k: p.grad.copy() for k, p in net.named_parameters()}
    assert not numpy.allclose(grads["first"]["conv1.0.bias"], grads["share"]["conv1.0.bias"])


@pytest.mark.parametrize("ties", ["first", "share"])
def test_gradient_check(xp, ties):
    net = Report2Net(rng=1, ties=ties, dropout=0.5, channels=(2, 3, 4, 5))
    rng = numpy.random.default_rng(2)
    for p in net.parameters():
        p.data[...] = xp.asarray(rng.standard_normal(p.data.shape).astype(numpy.float32) * 0.5)
    dropout = net.classifier[1]
    x = xp.asarray(rng.standard_normal((3, 1, 28, 28)))
    check_module(net, x, rng_state=(dropout.rng, dropout.rng.bit_generator.state), eps=1e-6, rtol=1e-5)
