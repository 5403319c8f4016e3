"""ResNet-9 and its variants against the PyTorch twin: keys, logits, every gradient, running
statistics, in train and eval mode."""

import numpy
import pytest
from _support import assert_close

from xpnet import backend, nn
from xpnet.gradient_check import check_module, to_float64
from xpnet.models import ResNet9

torch = pytest.importorskip("torch")
from xpnet.reference import TorchResNet9, to_torch_state  # noqa: E402

VARIANTS = {
    "report": {},
    "conv_shortcut": dict(shortcut="conv"),
    "three_blocks": dict(res_blocks=3),
    "avg_head": dict(head="avg"),
    "narrow_dropout": dict(channels=(4, 16, 32, 64), dropout=0.5),
    "logit_scale": dict(channels=(4, 8, 8, 16), logit_scale=0.125),
}


def test_report_architecture_has_the_expected_parameters_and_keys():
    net = ResNet9(rng=0)
    assert sum(p.data.size for p in net.parameters()) == 2_440_586
    twin = TorchResNet9()
    ours = net.state_dict()
    assert list(ours) == list(twin.state_dict())
    for k, v in twin.state_dict().items():
        assert ours[k].shape == tuple(v.shape), k
    assert list(ours)[:5] == ["conv1.0.weight", "conv1.0.bias", "conv1.1.weight", "conv1.1.bias",
                              "conv1.1.running_mean"]
    assert list(ours)[-2:] == ["classifier.2.weight", "classifier.2.bias"]


def test_torch_weights_load_into_xpnet():
    twin = TorchResNet9()
    net = ResNet9(rng=0)
    net.load_state_dict({k: v.numpy() for k, v in twin.state_dict().items() if "num_batches" not in k})
    for k, v in twin.state_dict().items():
        if "num_batches" not in k:
            numpy.testing.assert_array_equal(net.state_dict()[k], v.numpy())


def _pair(variant, seed=0, float64=True):
    cfg = VARIANTS[variant]
    net = ResNet9(rng=seed, **cfg)
    twin = TorchResNet9(**cfg)
    twin.load_state_dict(to_torch_state(net.state_dict()))
    if float64:
        return to_float64(net), twin.double()
    return net, twin


def _tensor(a, like):
    return torch.from_numpy(a).to(next(like.parameters()).dtype)


@pytest.mark.parametrize(
    ("variant", "float64"), [(v, True) for v in sorted(VARIANTS)] + [("report", False)]
)
def test_train_step_matches_the_twin(xp, variant, float64):
    net, twin = _pair(variant, float64=float64)
    dtype = numpy.float64 if float64 else numpy.float32
    # float64 checks the math to rounding; float32 (what trains) within its own precision.
    rtol, rel_atol = (1e-7, 1e-9) if float64 else (1e-3, 3e-3)
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((6, 1, 28, 28)).astype(dtype)
    labels = rng.integers(0, 10, 6)
    if VARIANTS[variant].get("dropout"):
        # Dropout masks come from different generators; compare the deterministic network.
        net.classifier[2].p = 0.0
        twin.classifier[2].p = 0.0
    loss_fn = nn.CrossEntropyLoss()
    logits = net(xp.asarray(x))
    loss = loss_fn(logits, xp.asarray(labels))
    net.zero_grad()
    net.backward(loss_fn.backward())

    tl = twin(_tensor(x, twin))
    tloss = torch.nn.functional.cross_entropy(tl, torch.from_numpy(labels))
    tloss.backward()
    assert logits.dtype == dtype
    assert_close(logits, tl.detach().numpy(), rtol=rtol, atol=rtol, what="logits")
    assert abs(loss - tloss.item()) < rtol * 10
    grads = {k: v.grad.numpy() for k, v in twin.named_parameters()}
    # Conv biases feeding a BatchNorm have a true gradient of zero, so their float32 values are
    # rounding noise: measure every error against the largest gradient in the model.
    scale = max(float(numpy.abs(g).max()) for g in grads.values())
    for name, p in net.named_parameters():
        if float64:
            assert_close(p.grad, grads[name], rtol=rtol, atol=rel_atol * scale, what=name)
        else:
            # In float32 a near-tie in a max-pool can route one window's gradient differently, so
            # compare whole tensors by relative norm rather than element by element.
            err = numpy.linalg.norm(backend.asnumpy(p.grad) - grads[name])
            assert err <= 1e-2 * numpy.linalg.norm(grads[name]) + rel_atol * scale, name
    for name, buf in twin.named_buffers():
        assert_close(net.state_dict()[name], buf.numpy(), rtol=rtol, atol=rtol, what=name)

    net.eval(), twin.eval()
    x2 = rng.standard_normal((3, 1, 28, 28)).astype(dtype)
    assert_close(net(xp.asarray(x2)), twin(_tensor(x2, twin)).detach().numpy(), rtol=rtol, atol=rtol, what="eval")


def test_adam_and_sgd_training_tracks_the_twin(xp):
    from xpnet import optim

    for make, make_t in [
        (lambda n: optim.Adam(n.named_parameters(), lr=1e-3), lambda t: torch.optim.Adam(t.parameters(), lr=1e-3)),
        (
            lambda n: optim.SGD(n.named_parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
            lambda t: torch.optim.SGD(t.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
        ),
    ]:
        net, twin = _pair("report", seed=3)
        opt, topt = make(net), make_t(twin)
        rng = numpy.random.default_rng(5)
        loss_fn = nn.CrossEntropyLoss()
        for _ in range(3):
            x = rng.standard_normal((8, 1, 28, 28))
            y = rng.integers(0, 10, 8)
            opt.zero_grad()
            loss_fn(net(xp.asarray(x)), xp.asarray(y))
            net.backward(loss_fn.backward())
            opt.step()
            topt.zero_grad()
            torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y)).backward()
            topt.step()
        theirs = twin.state_dict()
        for k, v in net.state_dict().items():
            assert_close(v, theirs[k].numpy(), rtol=1e-7, atol=1e-9, what=k)


def test_tiny_resnet_gradient_check(xp):
    rng = numpy.random.default_rng(2)
    for cfg in (dict(), dict(shortcut="conv", head="avg"), dict(res_blocks=3)):
        net = ResNet9(width=1 / 32, rng=1, **cfg)
        net.conv1.input_grad = True  # the check covers the images' gradient too
        x = xp.asarray(rng.standard_normal((3, 1, 28, 28)))
        check_module(net, x, eps=1e-6, rtol=1e-5)


def test_bad_arguments_are_rejected():
    for bad in (dict(shortcut="proj"), dict(res_blocks=4), dict(head="min"), dict(width=0)):
        with pytest.raises(ValueError):
            ResNet9(**bad)


@pytest.mark.parametrize(("image_size", "head"),
                         [((32, 32), "max"), ((16, 20), "max"), ((8, 8), "avg"), ((9, 30), "avg")])
def test_other_image_sizes_match_the_twin(image_size, head):
    net = to_float64(ResNet9(width=1 / 16, head=head, image_size=image_size, rng=0))
    twin = TorchResNet9(width=1 / 16, head=head, image_size=image_size)
    twin.load_state_dict(to_torch_state(net.state_dict()))
    twin.double()
    x = numpy.random.default_rng(0).standard_normal((4, 1, *image_size))
    assert_close(net(x), twin(torch.from_numpy(x)).detach().numpy(), rtol=1e-7, atol=1e-7)
    assert net.config["image_size"] == list(image_size)


@pytest.mark.parametrize("image_size", [(8, 8), (15, 28), (28, 5), (1, 1)])
def test_images_the_max_head_cannot_take_are_refused_before_building(image_size):
    with pytest.raises(ValueError, match="too small for this network"):
        ResNet9(image_size=image_size)


def test_the_first_block_skips_the_images_gradient_unless_asked(xp):
    """model.backward returns None (conv1 computes no input gradient) and leaves every parameter
    gradient as it is with the input gradient switched on; on, it returns the images' gradient."""
    rng = numpy.random.default_rng(3)
    x = xp.asarray(rng.standard_normal((3, 1, 28, 28)).astype(numpy.float32))
    labels = xp.asarray(rng.integers(0, 10, 3))
    grads = {}
    for on in (False, True):
        net = ResNet9(width=0.125, rng=0).train()
        net.conv1.input_grad = on
        loss_fn = nn.CrossEntropyLoss()
        loss_fn(net(x), labels)
        dx = net.backward(loss_fn.backward())
        assert (dx is None) != on and (dx is None or dx.shape == x.shape)
        grads[on] = {k: backend.asnumpy(p.grad) for k, p in net.named_parameters()}
    for k, g in grads[False].items():
        numpy.testing.assert_array_equal(g, grads[True][k], err_msg=k)


def test_logit_scale_multiplies_the_logits_and_their_gradient(xp):
    rng = numpy.random.default_rng(2)
    x = xp.asarray(rng.standard_normal((4, 1, 28, 28)).astype(numpy.float32))
    plain, scaled = (ResNet9(channels=(4, 8, 8, 16), rng=7, logit_scale=s) for s in (1.0, 0.125))
    assert_close(scaled(x), 0.125 * backend.asnumpy(plain(x)), rtol=1e-6, atol=1e-7, what="logits")
    dy = xp.asarray(rng.standard_normal((4, 10)).astype(numpy.float32))
    plain.zero_grad(), scaled.zero_grad()
    plain.backward(0.125 * dy)
    scaled.backward(dy)
    for (name, p), q in zip(plain.named_parameters(), scaled.parameters()):
        assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, what=name)
    assert list(scaled.state_dict()) == list(plain.state_dict())  # no parameter of its own
