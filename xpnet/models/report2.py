"""The second report's network: a narrow ResNet-9 without BatchNorm, with dropout 0.9 before
its linear layer (``--arch report2``).

Layout (every convolution 3x3, padding 1, with a bias; ReLU after each block)::

    conv1       Conv(1, 4) + ReLU                                   28x28
    conv2       Conv(4, 16) + ReLU                                  28x28
    res1        (Conv(16, 16), ReLU, Conv(16, 16)) + identity, ReLU  28x28
    pool1       MaxPool2d(2)                                        -> 14x14
    conv3       Conv(16, 32) + ReLU                                 14x14
    conv4       Conv(32, 64) + ReLU                                 14x14
    res2        (Conv(64, 64), ReLU, Conv(64, 64)) + identity, ReLU  14x14
    pool2       MaxPool2d(2)                                        -> 7x7
    classifier  Flatten (3,136 values), Dropout(p), Linear(3136, classes)

That is 46 MFLOP per image forward, six times ResNet-9 with the same channel counts (7.7 MFLOP), because it
convolves at 28x28 and 14x14 where ResNet-9 pools to 3x3. Weights start from a normal
distribution times 0.01 and biases at zero, as in the report (``init="report"``), or as PyTorch
initialises its layers (``init="pytorch"``). ``ties="share"`` gives its
max-pools the report's backward (every tied maximum takes the window's gradient).

The state_dict keys match ``xpnet.reference.TorchReport2Net`` built with the same arguments.
"""

from __future__ import annotations

import numpy

from xpnet import backend
from xpnet.models import schema
from xpnet.functional import Workspace
from xpnet.nn import Conv2d, ConvReLU, Dropout, Flatten, Linear, MaxPool2d, ReLU, Residual, ResidualReLU, Sequential

CHANNELS = (4, 16, 32, 64)
INIT_STD = 0.01


def conv_relu(c_in, c_out, rng, workspace=None, method="auto"):
    """relu(conv(x) + b), c_in -> c_out channels (one fused pass on the CPU)."""
    return ConvReLU(Conv2d(c_in, c_out, 3, padding=1, rng=rng), ReLU(), workspace=workspace, method=method)


def residual_relu(c, rng, workspace=None, method="auto"):
    """relu(x + conv(relu(conv(x)))) at c channels (two fused passes on the CPU)."""
    body = Residual(Conv2d(c, c, 3, padding=1, rng=rng), ReLU(), Conv2d(c, c, 3, padding=1, rng=rng))
    return ResidualReLU(body, ReLU(), workspace=workspace, method=method)


class Report2Net(Sequential):
    """x: (N, in_channels, 28, 28) -> logits (N, num_classes).

    Args:
        width: multiplies every channel count (rounded, at least 1), as ResNet9's does.
        dropout: drop probability on the 3,136 flattened features in training (the report: 0.9).
        ties: the max-pools' backward on tied maxima, "first" (PyTorch's) or "share" (the report's).
        init: "report" (weights normal x 0.01, biases zero) or "pytorch" (xpnet's layers' own,
            PyTorch's default: uniform in +-1/sqrt(fan_in) for weights and biases).
        channels: the four channel counts (default 4, 16, 32, 64).
        image_size: the input's (height, width); each 2x2 pool halves a side, rounding down.
        rng: seed or ``numpy.random.Generator`` for the initial weights and dropout masks.
    """

    def __init__(self, num_classes=10, in_channels=1, width=1.0, dropout=0.9, ties="first", init="report",
                 channels=CHANNELS, image_size=(28, 28), rng=None):
        config = schema.check(
            dict(arch="report2", in_channels=in_channels, width=width, dropout=dropout, ties=ties, init=init,
                 channels=list(channels), image_size=list(image_size)),
            num_classes, prefix="Report2Net",
        )
        h, w = config["image_size"]
        rng = numpy.random.default_rng(rng)
        # The layers draw their own (PyTorch-style uniform) weights; with the report's
        # initialisation they draw from a throwaway generator, replaced below, so that ``rng``
        # sees only the report's draw.
        scratch = numpy.random.default_rng(0) if init == "report" else rng
        c1, c2, c3, c4 = (max(1, round(c * width)) for c in channels)
        features = c4 * (h // 2 // 2) * (w // 2 // 2)
        tail = [Flatten()]
        if dropout > 0:
            tail.append(Dropout(dropout, rng=rng))
        tail.append(Linear(features, num_classes, rng=scratch))
        ws = Workspace()  # the convolutions' scratch, shared: they run one at a time
        # The pools' "share" rule counts exactly equal maxima, which a Winograd layer's rounding
        # splits in flat regions: with it, every convolution is im2col ("exact").
        method = "exact" if ties == "share" else "auto"
        super().__init__(
            {
                "conv1": conv_relu(in_channels, c1, scratch, ws, method),
                "conv2": conv_relu(c1, c2, scratch, ws, method),
                "res1": residual_relu(c2, scratch, ws, method),
                "pool1": MaxPool2d(2, 2, ties=ties),
                "conv3": conv_relu(c2, c3, scratch, ws, method),
                "conv4": conv_relu(c3, c4, scratch, ws, method),
                "res2": residual_relu(c4, scratch, ws, method),
                "pool2": MaxPool2d(2, 2, ties=ties),
                "classifier": Sequential(*tail),
            }
        )
        # The report's initialisation, drawn in the order of the parameter names.
        for name, p in self.named_parameters() if init == "report" else ():
            if name.endswith("weight"):
                value = rng.standard_normal(p.data.shape) * INIT_STD
            else:
                value = numpy.zeros(p.data.shape)
            p.data = backend.to_device(value.astype(numpy.float32))
            p.grad = backend.get_array_module(p.data).zeros_like(p.data)
        object.__setattr__(self, "config", dict(num_classes=num_classes, **config))

    @classmethod
    def from_config(cls, model_config: dict, num_classes: int, rng=None):
        """The model a stored config (``arch`` "report2") describes, checked first."""
        return cls(num_classes=num_classes, rng=rng, **schema.check(model_config, num_classes))
