"""ConvBlock: the fused block equals the plain Sequential of the same layers and PyTorch, in
train and eval mode, keeps the same state_dict keys, and falls back where it can't fuse."""

import copy

import numpy
import pytest
from _support import assert_close, randn, spread

from xpnet import backend, nn
from xpnet.gradient_check import check_module

torch = pytest.importorskip("torch")

# (N, C, O, H, W, pool)
CASES = [(2, 1, 4, 6, 6, False), (3, 3, 5, 7, 7, True), (1, 9, 8, 3, 3, True), (2, 8, 4, 5, 6, False)]


def _layers(c, o, pool, rng):
    layers = [nn.Conv2d(c, o, 3, padding=1, rng=rng), nn.BatchNorm2d(o, momentum=0.3), nn.ReLU()]
    return layers + ([nn.MaxPool2d(2, 2)] if pool else [])


def _torch_twin(c, o, pool):
    layers = [torch.nn.Conv2d(c, o, 3, padding=1), torch.nn.BatchNorm2d(o, momentum=0.3), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, *([torch.nn.MaxPool2d(2, 2)] if pool else []))


def _pair(c, o, pool, seed=0):
    block = nn.ConvBlock(*_layers(c, o, pool, numpy.random.default_rng(seed)))
    plain = nn.Sequential(*_layers(c, o, pool, numpy.random.default_rng(seed)))
    return block, plain


@pytest.mark.parametrize("case", CASES)
def test_block_equals_the_plain_sequential_and_torch(xp, rng, case):
    n, c, o, h, w, pool = case
    block, plain = _pair(c, o, pool)
    assert block.fused
    assert list(block.state_dict()) == list(plain.state_dict())
    twin = _torch_twin(c, o, pool).double()
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in plain.state_dict().items()})
    for step in range(2):
        x = spread(xp, rng, n, c, h, w, gap=0.01, dtype=numpy.float32) + 0.3
        y = block(x)
        y_ref = plain(x)
        tx = torch.tensor(backend.asnumpy(x), dtype=torch.float64, requires_grad=True)
        ty = twin(tx)
        assert y.shape == y_ref.shape and y.dtype == numpy.float32
        assert_close(y, y_ref, rtol=1e-4, atol=1e-5, what="forward vs Sequential")
        assert_close(y, ty.detach().numpy(), rtol=1e-4, atol=1e-5, what="forward vs torch")
        dy = randn(xp, rng, *y.shape)
        block.zero_grad(), plain.zero_grad(), twin.zero_grad()
        dx, dx_ref = block.backward(dy), plain.backward(dy)
        ty.backward(torch.from_numpy(backend.asnumpy(dy)).double())
        assert dx.dtype == numpy.float32
        assert_close(dx, dx_ref, rtol=1e-3, atol=1e-4, what="dx vs Sequential")
        assert_close(dx, tx.grad.numpy(), rtol=1e-3, atol=1e-4, what="dx vs torch")
        theirs = dict(twin.named_parameters())
        ref_grads = dict(plain.named_parameters())
        for name, p in block.named_parameters():
            assert p.grad.dtype == numpy.float32
            assert_close(p.grad, ref_grads[name].grad, rtol=1e-3, atol=1e-4, what=name)
            assert_close(p.grad, theirs[name].grad.numpy(), rtol=1e-3, atol=1e-4, what=name)
    ours, ref = block.state_dict(), plain.state_dict()
    for name, buf in twin.state_dict().items():
        if "running" in name or "num_batches" in name:
            assert_close(ours[name], ref[name], rtol=1e-5, atol=1e-6, what=name)
            assert_close(ours[name], buf.numpy(), rtol=1e-5, atol=1e-6, what=name)
    block.eval(), plain.eval(), twin.eval()
    x = randn(xp, rng, n, c, h, w)
    assert_close(block(x), plain(x), rtol=1e-4, atol=1e-5, what="eval vs Sequential")
    assert_close(block(x), twin(torch.from_numpy(backend.asnumpy(x)).double()).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_gradients_add_into_grad(xp, rng):
    block, _ = _pair(3, 4, True)
    x = randn(xp, rng, 2, 3, 5, 5)
    block.zero_grad()
    block(x)
    dy = randn(xp, rng, 2, 4, 2, 2)
    block.backward(dy)
    once = {k: p.grad.copy() for k, p in block.named_parameters()}
    block(x)
    block.backward(dy)
    for k, p in block.named_parameters():
        assert_close(p.grad, 2 * once[k], rtol=1e-5, atol=1e-6, what=k)


@pytest.mark.parametrize("case", CASES)
def test_gradient_check(xp, rng, case):
    n, c, o, h, w, pool = case
    block, _ = _pair(c, o, pool)
    check_module(block, spread(xp, rng, n, c, h, w, gap=0.01), eps=1e-6, rtol=1e-5)


def test_unsupported_configurations_run_as_a_sequential(xp, rng):
    rng_w = numpy.random.default_rng(0)
    for layers in (
        [nn.Conv2d(2, 3, 3, stride=2, padding=1, rng=rng_w), nn.BatchNorm2d(3), nn.ReLU()],
        [nn.Conv2d(2, 3, 3, padding=1, rng=rng_w), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(3, 2)],
        [nn.Conv2d(2, 3, 1, rng=rng_w), nn.BatchNorm2d(3), nn.ReLU()],
    ):
        block = nn.ConvBlock(*layers)
        plain = nn.Sequential(*copy.deepcopy(layers))
        assert not block.fused
        x = randn(xp, rng, 2, 2, 6, 6)
        assert_close(block(x), plain(x), rtol=1e-6, atol=1e-7)
        dy = randn(xp, rng, *block(x).shape)
        plain(x)
        assert_close(block.backward(dy), plain.backward(dy), rtol=1e-6, atol=1e-7)


def test_backward_without_forward_raises():
    block, _ = _pair(2, 3, False)
    with pytest.raises(RuntimeError):
        block.backward(numpy.zeros((1, 3, 4, 4), dtype=numpy.float32))


def _bias_fused_pair(kind, c, o, method, seed=0):
    def layers(rng):
        if kind == "conv":
            return [nn.Conv2d(c, o, 3, padding=1, rng=rng), nn.ReLU()]
        body = nn.Residual(nn.Conv2d(c, c, 3, padding=1, rng=rng), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1, rng=rng))
        return [body, nn.ReLU()]

    block = (nn.ConvReLU if kind == "conv" else nn.ResidualReLU)(*layers(numpy.random.default_rng(seed)), method=method)
    return block, nn.Sequential(*layers(numpy.random.default_rng(seed)))


@pytest.mark.parametrize("kind", ["conv", "residual"])
@pytest.mark.parametrize("method", ["auto", "exact"])
def test_bias_fused_blocks_equal_the_plain_sequential(xp, rng, kind, method):
    block, plain = _bias_fused_pair(kind, 6, 6 if kind == "residual" else 5, method)
    assert block.fused and list(block.state_dict()) == list(plain.state_dict())
    x = spread(xp, rng, 3, 6, 7, 9, gap=0.01, dtype=numpy.float32)
    y, y_ref = block(x), plain(x)
    assert_close(y, y_ref, rtol=1e-5, atol=1e-5, what="y")
    dy = randn(xp, rng, *y.shape)
    block.zero_grad(), plain.zero_grad()
    assert_close(block.backward(dy), plain.backward(dy), rtol=1e-4, atol=1e-5, what="dx")
    ours = dict(block.named_parameters())
    for name, p in plain.named_parameters():
        assert float(abs(backend.asnumpy(p.grad)).max()) > 0, name
        assert_close(ours[name].grad, p.grad, rtol=1e-4, atol=1e-4, what=name)
    assert block.forward_method() == method
    block.eval(), plain.eval()
    assert block.forward_method() == "auto"  # no backward pass to count ties in eval mode
    assert_close(block(x), plain(x), rtol=1e-5, atol=1e-5, what="eval")
    with pytest.raises(RuntimeError):  # eval mode keeps nothing for a backward pass
        block.backward(dy)


def test_bias_fused_gradient_check(rng):
    block, _ = _bias_fused_pair("residual", 3, 3, "auto")
    check_module(block, spread(numpy, rng, 2, 3, 6, 5, gap=0.01), eps=1e-6, rtol=1e-5)


def test_bias_fused_blocks_fall_back_where_they_cannot_fuse():
    no_bias = nn.ConvReLU(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.ReLU())
    strided = nn.ConvReLU(nn.Conv2d(2, 3, 3, padding=1, stride=2), nn.ReLU())
    skip = nn.ResidualReLU(nn.Residual(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1),
                                       shortcut=nn.Conv2d(2, 2, 1)), nn.ReLU())
    x = numpy.ones((1, 2, 4, 4), dtype=numpy.float32)
    for block in (no_bias, strided, skip):
        assert not block.fused
        y = block(x)
        assert block.backward(numpy.ones_like(y)).shape == x.shape
