"""Every layer module against its torch.nn twin (outputs, input and parameter gradients, running
statistics) and against the finite-difference checker."""

import numpy
import pytest
from _support import assert_close, randn, spread

from xpnet import backend, nn
from xpnet.gradient_check import check_module

torch = pytest.importorskip("torch")

from xpnet.reference.resnet9 import Scale as TorchScale  # noqa: E402

# (xpnet layer factory, torch layer factory, input shape, input kind)
LAYERS = {
    "conv": (lambda: nn.Conv2d(3, 4, 3, padding=1), lambda: torch.nn.Conv2d(3, 4, 3, padding=1), (2, 3, 6, 5)),
    "conv_strided_dilated_nobias": (
        lambda: nn.Conv2d(2, 3, (3, 2), stride=2, padding=(2, 1), dilation=(2, 1), bias=False),
        lambda: torch.nn.Conv2d(2, 3, (3, 2), stride=2, padding=(2, 1), dilation=(2, 1), bias=False),
        (2, 2, 7, 9),
    ),
    "conv1x1": (lambda: nn.Conv2d(4, 2, 1, bias=False), lambda: torch.nn.Conv2d(4, 2, 1, bias=False), (3, 4, 3, 3)),
    "batchnorm": (lambda: nn.BatchNorm2d(3), lambda: torch.nn.BatchNorm2d(3), (4, 3, 3, 5)),
    "relu": (nn.ReLU, torch.nn.ReLU, (2, 3, 4, 4)),
    "maxpool": (lambda: nn.MaxPool2d(2, 2), lambda: torch.nn.MaxPool2d(2, 2), (2, 3, 5, 7)),
    "maxpool_overlap_pad": (
        lambda: nn.MaxPool2d(3, 2, padding=1),
        lambda: torch.nn.MaxPool2d(3, 2, padding=1),
        (2, 2, 7, 6),
    ),
    "avgpool": (lambda: nn.AvgPool2d(2), lambda: torch.nn.AvgPool2d(2), (2, 3, 6, 5)),
    "global_avgpool": (nn.GlobalAvgPool2d, lambda: torch.nn.AdaptiveAvgPool2d(1), (2, 3, 3, 4)),
    "flatten": (nn.Flatten, torch.nn.Flatten, (2, 3, 2, 2)),
    "linear": (lambda: nn.Linear(6, 4), lambda: torch.nn.Linear(6, 4), (5, 6)),
    "scale": (lambda: nn.Scale(0.125), lambda: TorchScale(0.125), (5, 6)),
}


def _copy_params(ours, theirs):
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()}, strict=False)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_matches_torch(xp, rng, name):
    make, make_torch, shape = LAYERS[name]
    layer, ref = make(), make_torch()
    _copy_params(layer, ref)
    x = spread(xp, rng, *shape, gap=0.01, dtype=numpy.float32)
    y = layer(x)
    dy = randn(xp, rng, *y.shape)
    layer.zero_grad()
    dx = layer.backward(dy)

    tx = torch.tensor(backend.asnumpy(x), requires_grad=True)
    ty = ref(tx)
    ty.backward(torch.from_numpy(backend.asnumpy(dy)))
    assert y.dtype == numpy.float32 and dx.dtype == numpy.float32
    assert_close(y, ty.detach().numpy(), rtol=1e-4, atol=1e-5, what="forward")
    assert_close(dx, tx.grad.numpy(), rtol=1e-3, atol=1e-4, what="dx")
    theirs = dict(ref.named_parameters())
    for pname, p in layer.named_parameters():
        assert p.grad.shape == p.data.shape and p.grad.dtype == numpy.float32
        assert_close(p.grad, theirs[pname].grad.numpy(), rtol=1e-3, atol=1e-4, what=pname)
    for bname, buf in ref.named_buffers():
        assert_close(layer.state_dict()[bname], buf.numpy(), rtol=1e-5, atol=1e-6, what=bname)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_gradient_check(xp, rng, name):
    make, _, shape = LAYERS[name]
    check_module(make(), spread(xp, rng, *shape, gap=0.01), eps=1e-5)


def test_batchnorm_running_stats_and_eval_follow_torch(xp, rng):
    bn, ref = nn.BatchNorm2d(3, momentum=0.3), torch.nn.BatchNorm2d(3, momentum=0.3)
    for _ in range(3):
        x = randn(xp, rng, 4, 3, 2, 2) * 2.0 + 0.5
        bn(x)
        ref(torch.from_numpy(backend.asnumpy(x)))
    for k, v in ref.state_dict().items():
        assert_close(bn.state_dict()[k], v.numpy(), rtol=1e-5, atol=1e-6, what=k)
    bn.eval(), ref.eval()
    x = randn(xp, rng, 2, 3, 2, 2)
    assert_close(bn(x), ref(torch.from_numpy(backend.asnumpy(x))).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_dropout_module_matches_its_mask_and_is_identity_in_eval(xp, rng):
    gen = numpy.random.default_rng(3)
    drop = nn.Dropout(0.4, rng=gen)
    x = randn(xp, rng, 50, 40)
    state = gen.bit_generator.state
    y = drop(x)
    gen.bit_generator.state = state
    u = backend.asnumpy(backend.uniform(gen, x.shape))
    assert_close(y, numpy.where(u >= 0.4, backend.asnumpy(x) / 0.6, 0.0), rtol=1e-6, atol=1e-7)
    assert_close(drop.backward(xp.ones_like(x)), numpy.where(u >= 0.4, 1 / 0.6, 0.0), rtol=1e-6)
    drop.eval()
    assert drop(x) is x
    gen2 = numpy.random.default_rng(4)
    check_module(nn.Dropout(0.4, rng=gen2), randn(xp, rng, 6, 7), rng_state=(gen2, gen2.bit_generator.state))
    with pytest.raises(ValueError):
        nn.Dropout(1.5)


def test_backward_without_forward_is_an_error(xp):
    with pytest.raises(RuntimeError, match="without a forward pass"):
        nn.Conv2d(1, 1, 3).backward(xp.zeros((1, 1, 1, 1), dtype=numpy.float32))


def test_eval_mode_keeps_no_activations(xp, rng):
    conv = nn.Conv2d(2, 2, 3).eval()
    conv(randn(xp, rng, 1, 2, 5, 5))
    assert conv._cache is None


def test_weight_init_is_symmetric_and_pytorch_scaled():
    conv = nn.Conv2d(64, 128, 3, rng=numpy.random.default_rng(0))
    w = backend.asnumpy(conv.weight.data)
    bound = 1 / numpy.sqrt(64 * 9)
    assert w.dtype == numpy.float32
    assert abs(w.max()) <= bound and abs(w.min()) <= bound
    assert abs(w.mean()) < 0.02 * bound  # zero mean: the bounds are symmetric
    assert w.std() == pytest.approx(bound / numpy.sqrt(3), rel=0.02)


def test_smoke_forward_backward_through_every_layer(xp, rng):
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Residual(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),
        nn.AvgPool2d(2),
        nn.GlobalAvgPool2d(),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(4, 3),
    )
    loss_fn = nn.CrossEntropyLoss()
    x = randn(xp, rng, 4, 1, 8, 8)
    loss = loss_fn(net(x), xp.asarray([0, 1, 2, 0]))
    dx = net.backward(loss_fn.backward())
    assert numpy.isfinite(loss) and dx.shape == x.shape
    assert all(float(abs(p.grad).sum()) > 0 for p in net.parameters())
