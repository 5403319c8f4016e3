"""ResNet-9 for 28x28 digits, the report's architecture, with its ablation variants as arguments.

Default layout (each block is Conv3x3(pad 1) + BatchNorm + ReLU)::

    conv1   block(1, 64)                          28x28
    conv2   block(64, 128) + MaxPool2d(2)          -> 14x14
    res1    block(128, 128), block(128, 128) + skip
    conv3   block(128, 256) + MaxPool2d(2)          -> 7x7
    conv4   block(256, 256) + MaxPool2d(2)          -> 3x3
    res2    block(256, 256), block(256, 256) + skip
    classifier  MaxPool2d(2) | global average, Flatten, [Dropout], Linear(256, classes)

The state_dict keys match ``xpnet.reference.TorchResNet9`` built with the same arguments.
"""

from __future__ import annotations

import numpy

from xpnet.functional import Workspace
from xpnet.nn import (
    BatchNorm2d,
    Conv2d,
    ConvBlock,
    Dropout,
    Flatten,
    GlobalAvgPool2d,
    Linear,
    MaxPool2d,
    ReLU,
    Residual,
    Sequential,
)

SHORTCUTS = ("identity", "conv")
HEADS = ("max", "avg")
RES_BLOCKS = (2, 3)
CHANNELS = (64, 128, 256, 256)
NARROW_CHANNELS = (4, 16, 32, 64)


def block(c_in, c_out, rng, pool=False, workspace=None):
    """Conv3x3(pad 1) + BatchNorm2d + ReLU, optionally followed by MaxPool2d(2, 2), run fused."""
    layers = [Conv2d(c_in, c_out, 3, padding=1, rng=rng), BatchNorm2d(c_out), ReLU()]
    if pool:
        layers.append(MaxPool2d(2, 2))
    return ConvBlock(*layers, workspace=workspace)


def residual(c_in, c_out, shortcut, rng, workspace=None):
    """Two blocks plus a skip path: identity, or a 1x1 conv + BatchNorm (forced when the channel
    count changes)."""
    skip = None
    if shortcut == "conv" or c_in != c_out:
        skip = Sequential(Conv2d(c_in, c_out, 1, bias=False, rng=rng), BatchNorm2d(c_out))
    return Residual(
        block(c_in, c_out, rng, workspace=workspace),
        block(c_out, c_out, rng, workspace=workspace),
        shortcut=skip,
    )


class ResNet9(Sequential):
    """x: (N, in_channels, 28, 28) -> logits (N, num_classes).

    Args:
        width: multiplies every channel count (rounded, at least 1).
        shortcut: "identity" or "conv" (1x1 conv + BatchNorm on every skip path).
        res_blocks: 2, or 3 to turn the conv3/conv4 stage into a residual block 128->256 with a
            1x1-conv shortcut, followed by the stage's two pools.
        head: "max" (MaxPool2d(2) before the classifier) or "avg" (global average pooling).
        dropout: drop probability applied before the linear layer (0 for none).
        channels: the four base channel counts (default 64, 128, 256, 256), before ``width``.
        rng: seed or ``numpy.random.Generator`` for the initial weights and dropout masks.
    """

    def __init__(
        self,
        num_classes=10,
        in_channels=1,
        width=1.0,
        shortcut="identity",
        res_blocks=2,
        head="max",
        dropout=0.0,
        channels=CHANNELS,
        rng=None,
    ):
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        if res_blocks not in RES_BLOCKS:
            raise ValueError(f"res_blocks must be one of {RES_BLOCKS}, got {res_blocks!r}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        rng = numpy.random.default_rng(rng)
        c1, c2, c3, c4 = (max(1, round(c * width)) for c in channels)
        # The blocks run one at a time, so they can share their scratch buffers.
        ws = Workspace()

        stages = {
            "conv1": block(in_channels, c1, rng, workspace=ws),
            "conv2": block(c1, c2, rng, pool=True, workspace=ws),
            "res1": residual(c2, c2, shortcut, rng, workspace=ws),
        }
        if res_blocks == 2:
            stages["conv3"] = block(c2, c3, rng, pool=True, workspace=ws)
            stages["conv4"] = block(c3, c4, rng, pool=True, workspace=ws)
            stages["res2"] = residual(c4, c4, shortcut, rng, workspace=ws)
        else:
            stages["res2"] = residual(c2, c3, "conv", rng, workspace=ws)
            stages["pool2"] = Sequential(MaxPool2d(2, 2), MaxPool2d(2, 2))
            stages["res3"] = residual(c3, c4, shortcut, rng, workspace=ws)
        pool = MaxPool2d(2, 2) if head == "max" else GlobalAvgPool2d()
        tail = [pool, Flatten()]
        if dropout > 0:
            tail.append(Dropout(dropout, rng=rng))
        tail.append(Linear(c4, num_classes, rng=rng))
        stages["classifier"] = Sequential(*tail)
        super().__init__(stages)
        object.__setattr__(
            self,
            "config",
            dict(
                num_classes=num_classes,
                in_channels=in_channels,
                width=width,
                shortcut=shortcut,
                res_blocks=res_blocks,
                head=head,
                dropout=dropout,
                channels=list(channels),
            ),
        )

    @classmethod
    def narrow(cls, **kwargs):
        """The second report's narrow net: channels 4-16-32-64 and dropout 0.9."""
        kwargs.setdefault("channels", NARROW_CHANNELS)
        kwargs.setdefault("dropout", 0.9)
        return cls(**kwargs)
