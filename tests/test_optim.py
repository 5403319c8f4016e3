"""Optimizer steps and schedules against torch.optim, to float32 precision."""

import numpy
import pytest
from _support import assert_close

from xpnet import backend, nn, optim

torch = pytest.importorskip("torch")

CASES = {
    "sgd": (lambda p: optim.SGD(p, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "sgd_momentum_wd": (
        lambda p: optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
    ),
    "sgd_nesterov": (
        lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    ),
    "adam": (lambda p: optim.Adam(p, lr=1e-2), lambda p: torch.optim.Adam(p, lr=1e-2)),
    "adam_wd": (
        lambda p: optim.Adam(p, lr=1e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2),
        lambda p: torch.optim.Adam(p, lr=1e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2),
    ),
    "adamw": (
        lambda p: optim.AdamW(p, lr=1e-2, weight_decay=0.1),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_steps_match_torch(xp, name):
    make, make_torch = CASES[name]
    rng = numpy.random.default_rng(0)
    shapes = {"a": (4, 3), "b": (5,)}
    ours = {k: nn.Parameter(xp.asarray(rng.standard_normal(s).astype(numpy.float32))) for k, s in shapes.items()}
    theirs = {k: torch.tensor(backend.asnumpy(p.data), requires_grad=True) for k, p in ours.items()}
    opt, topt = make(list(ours.items())), make_torch(list(theirs.values()))
    for step in range(5):
        for k, s in shapes.items():
            g = rng.standard_normal(s).astype(numpy.float32)
            ours[k].grad[...] = xp.asarray(g)
            theirs[k].grad = torch.from_numpy(g.copy())
        opt.step()
        topt.step()
        for k in shapes:
            assert ours[k].data.dtype == numpy.float32
            assert_close(ours[k].data, theirs[k].detach().numpy(), rtol=1e-6, atol=1e-7, what=f"{k} step {step}")


def test_state_round_trip_continues_identically(xp):
    rng = numpy.random.default_rng(1)
    p1 = nn.Parameter(xp.asarray(rng.standard_normal(6).astype(numpy.float32)))
    p2 = nn.Parameter(p1.data.copy())
    a, b = optim.Adam([("w", p1)], lr=0.1), optim.Adam([("w", p2)], lr=0.1)
    g = xp.asarray(rng.standard_normal(6).astype(numpy.float32))
    for p in (p1, p2):
        p.grad[...] = g
    a.step()
    arrays, scalars = a.state_dict()
    assert set(arrays) == {"w.exp_avg", "w.exp_avg_sq"} and scalars["steps"] == 1
    p2.data[...] = p1.data
    b.load_state_dict({k: backend.asnumpy(v) for k, v in arrays.items()}, scalars)
    a.step(), b.step()
    numpy.testing.assert_array_equal(backend.asnumpy(p1.data), backend.asnumpy(p2.data))


def test_bad_hyperparameters_are_rejected():
    p = [nn.Parameter(numpy.zeros(2, dtype=numpy.float32))]
    with pytest.raises(ValueError):
        optim.SGD(p, lr=-1.0)
    with pytest.raises(ValueError):
        optim.SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError):
        optim.Adam(p, betas=(1.0, 0.9))
    with pytest.raises(ValueError):
        optim.SGD([], lr=0.1)


def _torch_lrs(make_sched, steps, lr):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = make_sched(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return numpy.array(out)


def test_onecycle_matches_torch():
    total = 50
    ours = numpy.array([optim.OneCycle(0.4, total, pct_start=0.3)(s) for s in range(total)])
    ref = _torch_lrs(
        lambda o: torch.optim.lr_scheduler.OneCycleLR(
            o, max_lr=0.4, total_steps=total, pct_start=0.3, cycle_momentum=False, anneal_strategy="cos"
        ),
        total,
        0.4,
    )
    numpy.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


def test_step_lr_matches_torch():
    ours = numpy.array([optim.StepLR(0.1, 7, 0.5)(s) for s in range(30)])
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, 7, 0.5), 30, 0.1)
    numpy.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_cosine_warms_up_then_decays_to_min():
    s = optim.Cosine(1.0, 100, warmup=10, min_lr=0.01)
    lrs = [s(i) for i in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert s(100) == pytest.approx(0.01)


@pytest.mark.parametrize("name", ["sgd_nesterov", "adam_wd"])
def test_on_the_device_an_update_and_a_zero_fill_are_one_launch_each(fake_cupy, name):
    rng = numpy.random.default_rng(0)
    params = [nn.Parameter(backend.to_device(rng.standard_normal(s).astype(numpy.float32)))
              for s in ((3, 4), (5,), (2, 2, 3))]
    before = [backend.asnumpy(p.data) for p in params]
    opt = CASES[name][0](params)
    # The parameters kept their values and became views of the optimizer's flat buffers.
    for p, b in zip(params, before):
        numpy.testing.assert_array_equal(backend.asnumpy(p.data), b)
        assert p.flat is opt.flat
    for p in params:
        p.grad += 1.0
    counts = fake_cupy.snapshot()
    opt.step()
    assert fake_cupy.since(counts)["ops"] == 1
    assert all(not numpy.array_equal(backend.asnumpy(p.data), b) for p, b in zip(params, before))
    counts = fake_cupy.snapshot()
    opt.zero_grad()
    assert fake_cupy.since(counts)["ops"] == 1
    assert all(not backend.asnumpy(p.grad).any() and p.zeroed for p in params)


@pytest.mark.parametrize("name", ["sgd", "sgd_momentum_wd", "sgd_nesterov"])
def test_compiled_sgd_gives_the_numpy_forms_bits(name, monkeypatch):
    """The compiled update (``jit``, one pass, split over threads from THREADED_UPDATE_SIZE
    values) equals the NumPy passes bit for bit, large and small parameters alike."""
    from xpnet.functional import jit

    if not jit.available():
        pytest.skip("numba is not installed")
    monkeypatch.setattr(optim, "THREADED_UPDATE_SIZE", 64)
    make = CASES[name][0]
    rng = numpy.random.default_rng(2)
    shapes = {"big": (40, 7), "small": (5,)}
    start = {k: rng.standard_normal(s).astype(numpy.float32) for k, s in shapes.items()}
    grads = [{k: rng.standard_normal(s).astype(numpy.float32) for k, s in shapes.items()} for _ in range(4)]
    results = {}
    for on in (True, False):
        previous = jit.set_enabled(on)
        try:
            params = {k: nn.Parameter(a.copy()) for k, a in start.items()}
            opt = make(list(params.items()))
            for g in grads:
                for k, p in params.items():
                    p.grad[...] = g[k]
                opt.step()
            results[on] = {k: p.data for k, p in params.items()}
        finally:
            jit.set_enabled(previous)
    for k in shapes:
        assert not numpy.array_equal(results[True][k], start[k])
        numpy.testing.assert_array_equal(results[True][k], results[False][k])
