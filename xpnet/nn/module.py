"""Parameters, the Module base class and the two generic compositions (Sequential, Residual).

A module holds parameters, buffers and the forward cache; the math lives in
``xpnet.functional``. ``backward(dy)`` returns ``dx`` and *adds* into each parameter's ``.grad``;
updating parameters is the optimizer's job.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy

from xpnet import backend


class Parameter:
    """A trainable array and its gradient: ``data`` and ``grad``, same shape and dtype.

    ``zeroed`` is True from ``zero_grad`` until a kernel first writes the gradient: a GEMM may
    then write it in place instead of adding into it (one launch less on a GPU). A kernel that
    writes ``grad`` directly calls ``take_zeroed()``; one that adds into it need not.
    """

    __slots__ = ("data", "grad", "zeroed", "flat")

    def __init__(self, data):
        self.data = data
        self.grad = backend.get_array_module(data).zeros_like(data)
        self.zeroed = True
        self.flat = None  # the FlatParameters this parameter's arrays are views of, if any

    def take_zeroed(self) -> bool:
        """True (once) if ``grad`` is known to be zero, so the caller may overwrite it."""
        zeroed, self.zeroed = self.zeroed, False
        return zeroed

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class FlatParameters:
    """The data and gradients of parameters of one dtype as views of two flat buffers.

    On a GPU each per-parameter operation is a kernel launch: over the flat buffers the
    optimizer's update is one fused kernel and ``zero_grad`` one fill, whatever the number of
    parameters. Each parameter starts at a multiple of ``ALIGN`` elements (256 bytes in
    float32), the alignment the GEMM libraries read fastest; the gaps stay zero.
    """

    ALIGN = 64

    def __init__(self, params):
        params = list(params)
        xp = backend.get_array_module(params[0].data)
        dtype = params[0].data.dtype
        if any(p.data.dtype != dtype for p in params):
            raise ValueError("FlatParameters: the parameters must share one dtype")
        self.params, self.offsets = params, []
        total = 0
        for p in params:
            self.offsets.append(total)
            total += -(-int(p.data.size) // self.ALIGN) * self.ALIGN
        self.data = xp.zeros(total, dtype=dtype)
        self.grad = xp.zeros(total, dtype=dtype)
        for p, view_data, view_grad in zip(params, self.views(self.data), self.views(self.grad)):
            view_data[...] = p.data
            view_grad[...] = p.grad
            p.data, p.grad, p.flat = view_data, view_grad, self

    def views(self, flat):
        """flat: an array shaped like ``data`` -> each parameter's view of it, in order."""
        return [flat[o : o + p.data.size].reshape(p.data.shape) for p, o in zip(self.params, self.offsets)]

    def zero_grad(self) -> None:
        self.grad.fill(0)
        for p in self.params:
            p.zeroed = True


class Module:
    """Base class: a tree of named child modules, parameters and buffers.

    Subclasses assign ``Parameter`` and ``Module`` attributes (registered automatically, in
    assignment order) and call ``register_buffer`` for non-trainable state such as running
    statistics. Buffers are updated in place so the registry never goes stale.
    """

    training: bool

    def __init__(self):
        object.__setattr__(self, "_params", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if isinstance(value, Parameter):
            self._params[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, array) -> None:
        self._buffers[name] = array
        object.__setattr__(self, name, array)

    def add_module(self, name: str, module: Module) -> None:
        self._modules[name] = module
        object.__setattr__(self, name, module)

    # -- computation ---------------------------------------------------------------------------

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    # -- the tree ------------------------------------------------------------------------------

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, Parameter) pairs in PyTorch's order: own first, then children."""
        for prefix, m in self.named_modules():
            for name, p in m._params.items():
                yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def _named_state(self) -> Iterator[tuple[str, object]]:
        for prefix, m in self.named_modules():
            for name, p in m._params.items():
                yield (f"{prefix}.{name}" if prefix else name), p.data
            for name, b in m._buffers.items():
                yield (f"{prefix}.{name}" if prefix else name), b

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad.fill(0)
            p.zeroed = True

    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, numpy.ndarray]:
        """Host copies of every parameter and buffer, keyed by dotted name (PyTorch's keys)."""
        return {name: backend.asnumpy(a).copy() for name, a in self._named_state()}

    def load_state_dict(self, state: Mapping[str, object], strict: bool = True) -> None:
        """Copy ``state`` (host or device arrays) into this module's arrays, in place.

        Shapes must match. With ``strict``, keys must match too, except that the optional
        ``num_batches_tracked`` counters may be missing.
        """
        own = dict(self._named_state())
        if strict:
            missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
            unexpected = [k for k in state if k not in own]
            if missing or unexpected:
                raise KeyError(
                    f"state_dict mismatch: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                    f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
                )
        for name, target in own.items():
            if name not in state:
                continue
            value = state[name]
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(
                    f"state_dict[{name!r}] has shape {tuple(value.shape)}, "
                    f"the model expects {tuple(target.shape)}"
                )
            xp = backend.get_array_module(target)
            target[...] = xp.asarray(backend.asnumpy(value) if xp is numpy else value)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not self._modules:
            return head + ")"
        lines = [head]
        for name, child in self._modules.items():
            text = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {text}")
        return "\n".join(lines) + "\n)"


class Sequential(Module):
    """Children run in order; backward runs them in reverse.

    ``Sequential(a, b, c)`` names the children "0", "1", "2"; ``Sequential({"conv1": a, ...})``
    keeps the given names (as ``torch.nn.Sequential(OrderedDict(...))`` does).
    """

    def __init__(self, *layers):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], Mapping):
            named = list(layers[0].items())
        else:
            named = [(str(i), m) for i, m in enumerate(layers)]
        for name, m in named:
            self.add_module(name, m)
        object.__setattr__(self, "layers", [m for _, m in named])

    def forward(self, x):
        for m in self.layers:
            x = m.forward(x)
        return x

    def backward(self, dy):
        for m in reversed(self.layers):
            dy = m.backward(dy)
        return dy

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)


class Residual(Sequential):
    """``body(x) + shortcut(x)``: a Sequential body plus an identity or module skip path.

    The body's children are named "0", "1", ... and a shortcut module "shortcut", so the keys of
    a residual stage read ``res1.0.0.weight`` and ``res1.shortcut.0.weight``. Backward returns the
    sum of both paths' input gradients.
    """

    def __init__(self, *body, shortcut: Module | None = None):
        super().__init__(*body)
        object.__setattr__(self, "shortcut", None)
        if shortcut is not None:
            self.add_module("shortcut", shortcut)

    def forward(self, x):
        skip = x if self.shortcut is None else self.shortcut.forward(x)
        body = super().forward(x)
        # Into an array laid out like the body's output (channels-last): CuPy would allocate a
        # bare ``body + skip`` in C order, and every later stage would read NCHW memory.
        out = backend.get_array_module(body, skip).empty_like(body)
        return backend.get_array_module(body).add(body, skip, out=out)

    def backward(self, dy):
        dx = super().backward(dy)
        dx += dy if self.shortcut is None else self.shortcut.backward(dy)
        return dx
