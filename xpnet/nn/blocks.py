"""ConvBlock: Conv2d(3x3) + BatchNorm2d + ReLU [+ MaxPool2d(2, 2)] run by one fused kernel.

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
from xpnet.functional.workspace import Workspace
from xpnet.nn.layers import BatchNorm2d, Conv2d, MaxPool2d, ReLU
from xpnet.nn.module import Sequential


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
    a private one by default.
    """

    def __init__(self, *layers, workspace=None):
        super().__init__(*layers)
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
                dy, cache, grads, conv.weight.take_zeroed(), True, self.workspace, bn.reduce_sums
            )
        dx, dw, db, dgamma, dbeta = F.conv_bn_relu_backward(dy, cache, ws=self.workspace, reduce_sums=bn.reduce_sums)
        conv.weight.grad += dw
        if conv.bias is not None:
            conv.bias.grad += db
        bn.weight.grad += dgamma
        bn.bias.grad += dbeta
        return dx
