"""One finite-difference gradient checker for every operation and module.

The check compares a backward pass with a central difference in float64 along a random
direction ``d``: for a scalar ``L(inputs) = sum(f(inputs) * dy)``,

    sum_i <grad_i, d_i>   ~   (L(inputs + eps d) - L(inputs - eps d)) / (2 eps)

One direction tests every gradient entry at once, so the check costs two extra forwards whatever
the size. Pick inputs away from kinks (ReLU at 0, max-pool ties) or keep ``eps`` small.
"""

from __future__ import annotations

import numpy

from xpnet.backend import get_array_module


class GradientCheckError(AssertionError):
    pass


def _directions(arrays, rng):
    out = []
    for a in arrays:
        xp = get_array_module(a)
        d = rng.standard_normal(a.shape)
        out.append(xp.asarray(d / max(numpy.linalg.norm(d), 1e-12), dtype=numpy.float64))
    return out


def check_directional(loss, inputs, grads, *, eps=1e-6, rtol=1e-6, atol=1e-9, seed=0):
    """Check analytic ``grads`` of ``loss(*inputs) -> float`` along a random direction.

    inputs: float64 arrays (perturbed in place and restored); grads: arrays of the same shapes.
    Raises GradientCheckError with both numbers when they disagree.
    """
    rng = numpy.random.default_rng(seed)
    dirs = _directions(inputs, rng)
    analytic = float(sum(float((g * d).sum()) for g, d in zip(grads, dirs)))

    def shifted(sign):
        for a, d in zip(inputs, dirs):
            a += sign * eps * d
        try:
            return float(loss(*inputs))
        finally:
            for a, d in zip(inputs, dirs):
                a -= sign * eps * d

    numeric = (shifted(+1.0) - shifted(-1.0)) / (2.0 * eps)
    if not abs(analytic - numeric) <= atol + rtol * max(abs(analytic), abs(numeric)):
        raise GradientCheckError(
            f"directional derivative mismatch: backward gives {analytic!r}, "
            f"finite differences give {numeric!r}"
        )
    return analytic, numeric


def check_function(forward, backward, inputs, dy, **kwargs):
    """Check ``backward(dy, *inputs) -> grads`` against ``forward(*inputs) -> y`` (float64)."""
    grads = backward(dy, *inputs)

    def loss(*xs):
        return float((forward(*xs) * dy).sum())

    return check_directional(loss, list(inputs), list(grads), **kwargs)


def to_float64(module):
    """Cast a module's parameters (zeroing their gradients) and float buffers to float64, in place.

    Returns the module. Checks then test the math itself, free of float32 rounding.
    """
    for m in module.modules():
        for p in m._params.values():
            p.data = p.data.astype(numpy.float64)
            p.grad = get_array_module(p.data).zeros_like(p.data)
        for name, b in list(m._buffers.items()):
            if b.dtype.kind == "f":
                m.register_buffer(name, b.astype(numpy.float64))
    return module


def check_module(module, x, dy=None, *, rng_state=None, seed=0, **kwargs):
    """Check a module's backward for input and every parameter, in float64.

    Converts ``module``'s parameters and buffers to float64 in place (so use a throwaway module).
    ``rng_state``: (generator, state) restored before every forward, for modules that draw
    random masks. Returns the module's output for further checks.
    """
    xp = get_array_module(x)
    to_float64(module)
    x = xp.asarray(x, dtype=numpy.float64).copy()
    params = module.parameters()

    def forward():
        if rng_state is not None:
            rng_state[0].bit_generator.state = rng_state[1]
        return module.forward(x)

    y = forward()
    if dy is None:
        dy = xp.asarray(numpy.random.default_rng(seed + 1).standard_normal(y.shape))
    module.zero_grad()
    dx = module.backward(dy)
    grads = [dx] + [p.grad.copy() for p in params]

    def loss(x_, *ps):
        return float((forward() * dy).sum())

    check_directional(loss, [x] + [p.data for p in params], grads, seed=seed, **kwargs)
    return y
