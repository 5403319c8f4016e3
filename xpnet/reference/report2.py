"""``TorchReport2Net``: the same network and parameter names as ``xpnet.models.Report2Net``.

``TorchReport2Net(**cfg).load_state_dict(to_torch_state(xpnet_model.state_dict()))`` copies the
xpnet weights, as for ``TorchResNet9``.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from xpnet.models.report2 import CHANNELS
from xpnet.reference.pooling import SharingMaxPool2d
from xpnet.reference.resnet9 import Residual


def conv_relu(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU())


def residual_relu(c):
    return nn.Sequential(
        Residual(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1)), nn.ReLU()
    )


class TorchReport2Net(nn.Sequential):
    """x: (N, in_channels, 28, 28) -> logits (N, num_classes); arguments as ``Report2Net`` (``init``
    is accepted for the same config and unused: a twin takes an xpnet model's weights)."""

    def __init__(self, num_classes=10, in_channels=1, width=1.0, dropout=0.9, ties="first", init="report",
                 channels=CHANNELS, image_size=(28, 28)):
        c1, c2, c3, c4 = (max(1, round(c * width)) for c in channels)

        def pool():
            return nn.MaxPool2d(2, 2) if ties == "first" else SharingMaxPool2d(2, 2)

        tail = [nn.Flatten()]
        if dropout > 0:
            tail.append(nn.Dropout(dropout))
        h, w = image_size
        tail.append(nn.Linear(c4 * (h // 2 // 2) * (w // 2 // 2), num_classes))
        super().__init__(
            OrderedDict(
                conv1=conv_relu(in_channels, c1),
                conv2=conv_relu(c1, c2),
                res1=residual_relu(c2),
                pool1=pool(),
                conv3=conv_relu(c2, c3),
                conv4=conv_relu(c3, c4),
                res2=residual_relu(c4),
                pool2=pool(),
                classifier=nn.Sequential(*tail),
            )
        )
