"""``TorchResNet9``: the same architecture and parameter names as ``xpnet.models.ResNet9``.

Both are built from the same stage description, so ``TorchResNet9(**cfg).load_state_dict(
to_torch_state(xpnet_model.state_dict()))`` gives a bit-for-bit copy of the xpnet weights.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy
import torch
from torch import nn

from xpnet.models.resnet9 import CHANNELS, stage_table
from xpnet.models.schema import head_features


class Residual(nn.Sequential):
    """body(x) + shortcut(x); body children "0", "1", optional "shortcut" child."""

    def __init__(self, *body, shortcut=None):
        super().__init__(*body)
        self.n_body = len(body)
        self.shortcut = shortcut

    def forward(self, x):
        out = x
        for i in range(self.n_body):
            out = self[i](out)
        return out + (x if self.shortcut is None else self.shortcut(x))


class Scale(nn.Module):
    """x -> factor * x, as ``xpnet.nn.Scale``."""

    def __init__(self, factor):
        super().__init__()
        self.factor = float(factor)

    def forward(self, x):
        return x * self.factor


def block(c_in, c_out, pool=False):
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


def residual(c_in, c_out, shortcut):
    skip = None
    if shortcut == "conv" or c_in != c_out:
        skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
    return Residual(block(c_in, c_out), block(c_out, c_out), shortcut=skip)


class TorchResNet9(nn.Sequential):
    """x: (N, in_channels, H, W) -> logits (N, num_classes); arguments as ``ResNet9``."""

    def __init__(
        self,
        num_classes=10,
        in_channels=1,
        width=1.0,
        shortcut="identity",
        res_blocks=2,
        head="max",
        dropout=0.0,
        logit_scale=1.0,
        channels=CHANNELS,
        image_size=(28, 28),
    ):
        c1, c2, c3, c4 = (max(1, round(c * width)) for c in channels)
        make = {
            "block": lambda c_in, c_out, pool: block(c_in, c_out, pool=pool),
            "residual": residual,
            "pool2": lambda *_: nn.Sequential(nn.MaxPool2d(2, 2), nn.MaxPool2d(2, 2)),
        }
        # The same stage table as xpnet's ResNet9.
        stages = OrderedDict((name, make[kind](c_in, c_out, arg))
                             for name, kind, c_in, c_out, arg in stage_table(in_channels, (c1, c2, c3, c4), res_blocks,
                                                                             shortcut))
        tail = [nn.MaxPool2d(2, 2) if head == "max" else nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if dropout > 0:
            tail.append(nn.Dropout(dropout))
        tail.append(nn.Linear(head_features(c4, image_size, head), num_classes))
        if logit_scale != 1.0:
            tail.append(Scale(logit_scale))
        stages["classifier"] = nn.Sequential(*tail)
        super().__init__(stages)


def to_torch_state(state: dict) -> "OrderedDict[str, torch.Tensor]":
    """xpnet state_dict (host arrays) -> tensors for ``TorchResNet9.load_state_dict``."""
    return OrderedDict((k, torch.from_numpy(numpy.array(v))) for k, v in state.items())
