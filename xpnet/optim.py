"""Optimizers and learning-rate schedules.

Optimizers follow ``torch.optim``'s update rules exactly, so a step agrees with PyTorch to float32
precision. They take ``model.named_parameters()`` (or bare Parameters, then named by position) and
key their state on those names, which is what checkpoints store. Updates are in place, on
whichever backend the parameters live.

Schedules are pure functions of the global step, ``schedule(step) -> lr``: resuming a run needs
nothing but the step count.
"""

from __future__ import annotations

import math

import numpy

from xpnet import backend
from xpnet.backend import get_array_module
from xpnet.functional import jit
from xpnet.functional.parallel import for_chunks, workers
from xpnet.nn.module import FlatParameters

# The updates as elementwise functions of one parameter's arrays, written in place: on CuPy each
# runs as one fused kernel per parameter (``backend.fuse``) instead of six to ten launches.


def _sgd(p, g, lr, wd):
    p -= lr * (g + wd * p)


def _sgd_momentum(p, g, buf, lr, wd, momentum):
    buf *= momentum
    buf += g + wd * p
    p -= lr * buf


def _sgd_nesterov(p, g, buf, lr, wd, momentum):
    d = g + wd * p
    buf *= momentum
    buf += d
    p -= lr * (d + momentum * buf)


def _adam(p, g, m, v, lr_bc1, beta1, beta2, c1, c2, inv_sqrt_bc2, eps, wd, decay):
    """c1, c2: 1 - beta1, 1 - beta2; decay: the decoupled factor ``1 - lr * wd`` (1 for plain
    Adam); wd: the L2 weight (0 for AdamW)."""
    p *= decay
    d = g + wd * p
    m *= beta1
    m += c1 * d
    v *= beta2
    v += c2 * (d * d)
    p -= lr_bc1 * (m / (backend.xp().sqrt(v) * inv_sqrt_bc2 + eps))


# Parameters from this many values up are split over the CPU threads; smaller ones take one.
THREADED_UPDATE_SIZE = 1 << 16


def _compiled(name, arrays):
    """The compiled CPU loop ``name`` (``jit``) if it is there and every array is a C-contiguous
    NumPy array (the loops walk them flat), else None: the NumPy form runs."""
    loop = jit.kernel(name)
    if loop is None or not all(type(a) is numpy.ndarray and a.flags.c_contiguous for a in arrays):
        return None
    return loop


def _run_flat(loop, arrays, scalars):
    """``loop(*flat arrays, *scalars)`` over chunks of the flattened arrays, spread over the
    threads when they are large: one pass over memory where NumPy makes six to nine, on every
    core (at width 1.0 the update is ~10 % of a batch-8 step on one thread)."""
    flat = [a.reshape(-1) for a in arrays]
    n = flat[0].shape[0]
    nb = -(-n // workers(numpy)) if n >= THREADED_UPDATE_SIZE else n

    def body(t, i0, i1):
        loop(*(a[i0:i1] for a in flat), *scalars)

    for_chunks(numpy, n, max(nb, 1), body)


def _flatten(params):
    """On a GPU, the parameters' data and gradients as views of two flat buffers
    (``nn.FlatParameters``), so that an update and a zero fill are one launch each; None on the
    CPU, where per-parameter passes stay in cache, or when they are already split otherwise."""
    if backend.get_array_module(params[0].data) is numpy:
        return None
    flat = params[0].flat
    if flat is not None and flat.params == params:
        return flat
    if any(p.flat is not None for p in params) or len({p.data.dtype for p in params}) > 1:
        return None
    return FlatParameters(params)


def _named(params):
    items = list(params)
    if items and isinstance(items[0], tuple):
        return dict(items)
    return {str(i): p for i, p in enumerate(items)}


class Optimizer:
    """Base class: holds named parameters, per-parameter state arrays and a step counter."""

    slots: tuple[str, ...] = ()

    def __init__(self, params, lr):
        if lr < 0:
            raise ValueError(f"learning rate must be non-negative, got {lr}")
        self.params = _named(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        self.lr = float(lr)
        self.steps = 0
        self.scalars = None  # the per-step scalars on the device (``device_scalars``), if kept there
        self.flat = _flatten(list(self.params.values()))
        if self.flat is None:
            self.state = {
                name: {s: get_array_module(p.data).zeros_like(p.data) for s in self.slots}
                for name, p in self.params.items()
            }
        else:
            # The state as flat buffers too (one update over them all), viewed per parameter
            # for checkpoints.
            self.flat_state = {s: get_array_module(self.flat.data).zeros_like(self.flat.data) for s in self.slots}
            views = {s: self.flat.views(a) for s, a in self.flat_state.items()}
            self.state = {name: {s: views[s][i] for s in self.slots} for i, name in enumerate(self.params)}

    def device_scalars(self) -> None:
        """Keep the per-step scalars (the learning rate; Adam's bias corrections and decay) in a
        device array from now on, read by the update kernels, so that a CUDA graph replaying
        ``step`` sees each step's values: ``load_scalars`` writes them, outside the graph."""
        xp = get_array_module(next(iter(self.params.values())).data)
        dtype = next(iter(self.params.values())).data.dtype
        self.scalars = xp.zeros(len(self._step_scalars(1)), dtype=dtype)

    def load_scalars(self, step: int) -> None:
        """Write the scalars of update number ``step`` (1-based) into the device array."""
        host = numpy.asarray(self._step_scalars(step), dtype=self.scalars.dtype)
        self.scalars[...] = get_array_module(self.scalars).asarray(host)

    def _step_scalars(self, step: int) -> list[float]:
        return [self.lr]

    def zero_grad(self) -> None:
        if self.flat is not None:
            self.flat.zero_grad()
            return
        for p in self.params.values():
            p.grad.fill(0)
            p.zeroed = True

    def step(self) -> None:
        self.steps += 1
        if self.flat is not None:
            self._update(self.flat, self.flat_state)
            return
        for name, p in self.params.items():
            self._update(p, self.state[name])

    def _update(self, p, state) -> None:
        raise NotImplementedError

    def state_dict(self) -> tuple[dict, dict]:
        """-> (arrays keyed "param_name.slot", scalars) for a checkpoint."""
        arrays = {f"{n}.{s}": a for n, st in self.state.items() for s, a in st.items()}
        return arrays, {"steps": self.steps, "lr": self.lr}

    def load_state_dict(self, arrays: dict, scalars: dict) -> None:
        for n, st in self.state.items():
            for s, a in st.items():
                value = arrays[f"{n}.{s}"]
                if tuple(value.shape) != a.shape:
                    raise ValueError(f"optimizer state {n}.{s} has shape {tuple(value.shape)}")
                a[...] = get_array_module(a).asarray(value)
        self.steps = int(scalars["steps"])
        self.lr = float(scalars["lr"])


class SGD(Optimizer):
    """SGD with optional (Nesterov) momentum and L2 weight decay, as ``torch.optim.SGD``
    (dampening 0): ``g = grad + wd*p; buf = momentum*buf + g; p -= lr * (g + momentum*buf if
    nesterov else buf)``."""

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        if momentum < 0 or weight_decay < 0:
            raise ValueError("momentum and weight_decay must be non-negative")
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.slots = ("momentum_buffer",) if momentum else ()
        super().__init__(params, lr)
        self.momentum, self.nesterov, self.weight_decay = float(momentum), nesterov, float(weight_decay)

    def _update(self, p, state):
        s = p.data.dtype.type  # scalars in the parameter's dtype: float32 math for float32 weights
        lr, wd = s(self.lr) if self.scalars is None else self.scalars[0], s(self.weight_decay)
        if not self.momentum:
            arrays, scalars, step, name = (p.data, p.grad), (lr, wd), _sgd, "sgd"
        else:
            arrays, scalars = (p.data, p.grad, state["momentum_buffer"]), (lr, wd, s(self.momentum))
            step, name = (_sgd_nesterov, "sgd_nesterov") if self.nesterov else (_sgd_momentum, "sgd_momentum")
        loop = _compiled(name, arrays) if self.scalars is None else None
        if loop is not None:
            _run_flat(loop, arrays, scalars)
            return
        backend.fuse(step)(*arrays, *scalars)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, as ``torch.optim.Adam``; ``weight_decay`` is
    L2 added to the gradient."""

    slots = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        self.beta1, self.beta2 = (float(b) for b in betas)
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self.eps, self.weight_decay = float(eps), float(weight_decay)

    def _step_scalars(self, step):
        """[lr / bias correction 1, 1 / sqrt(bias correction 2), decoupled decay] of update ``step``."""
        bc1 = 1.0 - self.beta1**step
        bc2 = 1.0 - self.beta2**step
        decay = 1.0 - self.lr * self.weight_decay if self.decoupled else 1.0
        return [self.lr / bc1, 1.0 / math.sqrt(bc2), decay]

    def _update(self, p, state):
        wd = 0.0 if self.decoupled else self.weight_decay
        s = p.data.dtype.type
        if self.scalars is None:
            lr_bc1, inv_sqrt_bc2, decay = (s(v) for v in self._step_scalars(self.steps))
        else:
            lr_bc1, inv_sqrt_bc2, decay = (self.scalars[i] for i in range(3))
        backend.fuse(_adam)(
            p.data, p.grad, state["exp_avg"], state["exp_avg_sq"], lr_bc1, s(self.beta1),
            s(self.beta2), s(1.0 - self.beta1), s(1.0 - self.beta2), inv_sqrt_bc2,
            s(self.eps), s(wd), decay,
        )


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``:
    ``p *= 1 - lr*wd`` before the Adam step."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


# -- learning-rate schedules -------------------------------------------------------------------


class Constant:
    """lr(step) = lr."""

    def __init__(self, lr):
        self.lr = float(lr)

    def __call__(self, step: int) -> float:
        return self.lr


class StepLR:
    """lr(step) = lr * gamma ** (step // step_size), as ``torch.optim.lr_scheduler.StepLR``."""

    def __init__(self, lr, step_size, gamma=0.1):
        if step_size < 1:
            raise ValueError("step_size must be >= 1")
        self.lr, self.step_size, self.gamma = float(lr), int(step_size), float(gamma)

    def __call__(self, step: int) -> float:
        return self.lr * self.gamma ** (step // self.step_size)


class Cosine:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``lr`` to ``min_lr`` at
    ``total_steps``."""

    def __init__(self, lr, total_steps, warmup=0, min_lr=0.0):
        if total_steps < 1 or not 0 <= warmup < total_steps:
            raise ValueError("need total_steps >= 1 and 0 <= warmup < total_steps")
        self.lr, self.total, self.warmup, self.min_lr = float(lr), int(total_steps), int(warmup), float(min_lr)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * t))


class OneCycle:
    """One-cycle policy (Smith): cosine rise from ``max_lr/div`` to ``max_lr`` over the first
    ``pct_start`` of ``total_steps``, then cosine fall to ``max_lr/(div*final_div)``, as
    ``torch.optim.lr_scheduler.OneCycleLR`` with cosine annealing."""

    def __init__(self, max_lr, total_steps, pct_start=0.25, div=25.0, final_div=1e4):
        if total_steps < 2 or not 0.0 < pct_start < 1.0:
            raise ValueError("need total_steps >= 2 and 0 < pct_start < 1")
        self.max_lr, self.total = float(max_lr), int(total_steps)
        self.initial = self.max_lr / div
        self.final = self.initial / final_div
        self.peak_step = float(pct_start * self.total) - 1.0

    @staticmethod
    def _cos(start, end, t):
        return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * t))

    def __call__(self, step: int) -> float:
        step = min(step, self.total - 1)
        if step <= self.peak_step:
            return self._cos(self.initial, self.max_lr, step / self.peak_step if self.peak_step > 0 else 1.0)
        t = (step - self.peak_step) / (self.total - 1 - self.peak_step)
        return self._cos(self.max_lr, self.final, t)


SCHEDULES = {"onecycle": OneCycle, "cosine": Cosine, "step": StepLR, "constant": Constant}

# The optimizers by name; torch.optim's classes of the same names take the same settings.
OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def settings(cfg) -> dict:
    """The keyword arguments of the optimizer ``cfg.optimizer`` names, from ``cfg``'s ``lr``,
    ``momentum``, ``nesterov`` and ``weight_decay`` (a ``TrainConfig``): the one table both
    xpnet's optimizers and PyTorch's twins are built from. Nesterov needs momentum to act on."""
    if cfg.optimizer == "sgd":
        return dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                    weight_decay=cfg.weight_decay)
    if cfg.optimizer in OPTIMIZERS:
        return dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
