"""ConvBlock: Conv2d(3x3) + BatchNorm2d + ReLU [+ MaxPool2d(2, 2)] run by one fused kernel; and
for networks without BatchNorm, ConvReLU (Conv2d(3x3) + ReLU) and ResidualReLU (a two-conv
residual block and its ReLU), run by ``functional.fused_bias`` on the CPU.

A ``Sequential`` of exactly those layers, so parameters, buffers and state_dict keys are the
plain layers' (``conv2.0.weight``, ``conv2.1.running_mean``, ...), while forward and backward go
through ``xpnet.functional.fused`` with the children's parameters and buffers. A configuration
the fused kernel does not cover runs as the plain Sequential.
"""

from __future__ import annotations

import numpy

from xpnet import backend
from xpnet import functional as F
from xpnet.functional import fused_device
from xpnet.functional.fused_bias import METHODS as CONV_METHODS
from xpnet.functional.workspace import Workspace
from xpnet.nn.layers import BatchNorm2d, Conv2d, MaxPool2d, ReLU
from xpnet.nn.module import Residual, Sequential


def _fusable(layers):
    if len(layers) not in (3, 4):
        return False
    conv, bn, relu, *pool = layers
    if not (isinstance(conv, Conv2d) and isinstance(bn, BatchNorm2d) and isinstance(relu, ReLU)):
        return False
    if conv.weight.shape[2:] != (3, 3) or conv.weight.shape[0] != bn.weight.shape[0]:
        return False
    if (conv.stride, conv.padding, conv.dilation) != ((1, 1), (1, 1), (1, 1)):
        return False
    if pool:
        (pool,) = pool
        if not isinstance(pool, MaxPool2d):
            return False
        # The fused kernel's backward sends a tied window's gradient to its first maximum only.
        if (pool.kernel_size, pool.stride, pool.padding, pool.ties) != ((2, 2), (2, 2), (0, 0), "first"):
            return False
    return True


class ConvBlock(Sequential):
    """x: (N, C, H, W) -> (N, O, H, W), or (N, O, H//2, W//2) with the pool.

    ``ConvBlock(Conv2d(c, o, 3, padding=1), BatchNorm2d(o), ReLU()[, MaxPool2d(2, 2)])``.
    ``workspace``: scratch buffers to use (share one across a model's blocks to save memory);
    a private one by default. ``input_grad``: False for a network's first block, whose input
    (the images) needs no gradient: the fused backward then skips it and returns None.
    """

    def __init__(self, *layers, workspace=None, input_grad=True):
        super().__init__(*layers)
        object.__setattr__(self, "input_grad", bool(input_grad))
        object.__setattr__(self, "fused", _fusable(self.layers))
        object.__setattr__(self, "workspace", Workspace() if workspace is None else workspace)
        object.__setattr__(self, "_cache", None)

    def forward(self, x):
        if not self.fused:
            return super().forward(x)
        conv, bn = self.layers[0], self.layers[1]
        pool = len(self.layers) == 4
        b = None if conv.bias is None else conv.bias.data
        if not self.training:
            object.__setattr__(self, "_cache", None)
            return F.conv_bn_relu_eval_forward(
                x, conv.weight.data, b, bn.weight.data, bn.bias.data, bn.running_mean,
                bn.running_var, bn.eps, pool, self.workspace,
            )
        if backend.get_array_module(x) is not numpy:
            # The device body folds the batch into the running statistics in its finishing kernel.
            running = (bn.running_mean, bn.running_var, b, bn.momentum, bn.batch_count(x))
            y, cache, _, _ = fused_device.train_forward(
                x, conv.weight.data, bn.weight.data, bn.bias.data, bn.eps, pool, self.workspace, bn.reduce_sums, running
            )
            bn.count_batch()
        else:
            y, cache, mean, var = F.conv_bn_relu_train_forward(
                x, conv.weight.data, bn.weight.data, bn.bias.data, bn.eps, pool, self.workspace, bn.reduce_sums
            )
            bn.update_running_stats(mean if b is None else mean + b, var, bn.batch_count(x))
        object.__setattr__(self, "_cache", cache)
        return y

    def backward(self, dy):
        if not self.fused:
            return super().backward(dy)
        cache = self._cache
        if cache is None:
            raise RuntimeError("ConvBlock.backward called without a training-mode forward pass")
        object.__setattr__(self, "_cache", None)
        conv, bn = self.layers[0], self.layers[1]
        if backend.get_array_module(dy) is not numpy:
            # The device body adds into the gradients itself (the conv bias's is zero), and
            # writes the weight's after zero_grad.
            grads = (conv.weight.grad, bn.weight.grad, bn.bias.grad)
            if conv.bias is not None:
                conv.bias.take_zeroed()
            return fused_device.backward(
                dy, cache, grads, conv.weight.take_zeroed(), self.input_grad, self.workspace, bn.reduce_sums
            )
        dx, dw, db, dgamma, dbeta = F.conv_bn_relu_backward(
            dy, cache, need_dx=self.input_grad, ws=self.workspace, reduce_sums=bn.reduce_sums
        )
        conv.weight.grad += dw
        if conv.bias is not None:
            conv.bias.grad += db
        bn.weight.grad += dgamma
        bn.bias.grad += dbeta
        return dx


def _fusable_conv(conv):
    return (isinstance(conv, Conv2d) and conv.bias is not None and conv.weight.shape[2:] == (3, 3)
            and (conv.stride, conv.padding, conv.dilation) == ((1, 1), (1, 1), (1, 1)))


class _BiasFused(Sequential):
    """A Sequential whose CPU forward and backward run ``functional.fused_bias``; on a device, or
    in a layout it does not cover, it runs as the plain Sequential (its keys are the plain
    layers' in either case). ``workspace`` as for ``ConvBlock``; ``method`` the convolution's,
    "auto" or "exact" (see ``functional.fused_bias.METHODS``)."""

    def __init__(self, *layers, workspace=None, method="auto"):
        super().__init__(*layers)
        if method not in CONV_METHODS:
            raise ValueError(f"method must be one of {CONV_METHODS}, got {method!r}")
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "workspace", Workspace() if workspace is None else workspace)
        object.__setattr__(self, "_cache", None)

    def forward_method(self):
        """The forward's plan: ``method`` in training; "auto" in eval mode, where no backward
        pass counts ties (the logits move by rounding only)."""
        return self.method if self.training else "auto"

    def _fused_here(self, x):
        return self.fused and backend.get_array_module(x) is numpy

    def _take(self):
        cache = self._cache
        object.__setattr__(self, "_cache", None)
        return cache

    def _keep(self, cache):
        object.__setattr__(self, "_cache", cache if self.training else None)


class ConvReLU(_BiasFused):
    """``ConvReLU(Conv2d(c, o, 3, padding=1), ReLU())``: x (N, C, H, W) -> relu(conv(x) + b),
    (N, O, H, W), by ``fused_bias`` on the CPU."""

    def __init__(self, conv, relu, workspace=None, method="auto"):
        super().__init__(conv, relu, workspace=workspace, method=method)
        object.__setattr__(self, "fused", _fusable_conv(conv) and isinstance(relu, ReLU))

    def forward(self, x):
        object.__setattr__(self, "_cache", None)
        if not self._fused_here(x):
            return super().forward(x)
        conv = self.layers[0]
        y, cache = F.conv_bias_relu_forward(x, conv.weight.data, conv.bias.data, ws=self.workspace,
                                            method=self.forward_method())
        self._keep(cache)
        return y

    def backward(self, dy):
        cache = self._take()
        if cache is None:
            return super().backward(dy)
        conv = self.layers[0]
        dx, dw, db, _ = F.conv_bias_relu_backward(dy, cache, ws=self.workspace)
        conv.weight.grad += dw
        conv.bias.grad += db
        return dx


class ResidualReLU(_BiasFused):
    """``ResidualReLU(Residual(Conv2d(c, c, 3, padding=1), ReLU(), Conv2d(c, c, 3, padding=1)),
    ReLU())``: x (N, C, H, W) -> relu(x + conv2(relu(conv1(x)))), same shape, as two
    ``fused_bias`` calls on the CPU (the second adds the identity before its ReLU, and its ReLU
    input's gradient is the skip path's)."""

    def __init__(self, body, relu, workspace=None, method="auto"):
        super().__init__(body, relu, workspace=workspace, method=method)
        layers = body.layers if isinstance(body, Residual) else ()
        object.__setattr__(self, "fused", (
            isinstance(body, Residual) and body.shortcut is None and len(layers) == 3
            and _fusable_conv(layers[0]) and isinstance(layers[1], ReLU) and _fusable_conv(layers[2])
            and layers[0].weight.shape[0] == layers[2].weight.shape[1] == layers[2].weight.shape[0]
            and isinstance(relu, ReLU)
        ))

    def forward(self, x):
        object.__setattr__(self, "_cache", None)
        if not self._fused_here(x):
            return super().forward(x)
        conv1, _, conv2 = self.layers[0].layers
        ws, method = self.workspace, self.forward_method()
        h, cache1 = F.conv_bias_relu_forward(x, conv1.weight.data, conv1.bias.data, ws=ws, method=method)
        y, cache2 = F.conv_bias_relu_forward(h, conv2.weight.data, conv2.bias.data, residual=x, ws=ws, method=method)
        self._keep((cache1, cache2))
        return y

    def backward(self, dy):
        caches = self._take()
        if caches is None:
            return super().backward(dy)
        conv1, _, conv2 = self.layers[0].layers
        dh, dw2, db2, g = F.conv_bias_relu_backward(dy, caches[1], ws=self.workspace)
        dx, dw1, db1, _ = F.conv_bias_relu_backward(dh, caches[0], ws=self.workspace)
        conv2.weight.grad += dw2
        conv2.bias.grad += db2
        conv1.weight.grad += dw1
        conv1.bias.grad += db1
        dx += g
        return dx
