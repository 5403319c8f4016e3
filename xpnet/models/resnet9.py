"""ResNet-9 for 28x28 digits (other sizes too), the report's architecture, with its ablation
variants as arguments.

Default layout (each block is Conv3x3(pad 1) + BatchNorm + ReLU)::

    conv1   block(1, 64)                          28x28
    conv2   block(64, 128) + MaxPool2d(2)          -> 14x14
    res1    block(128, 128), block(128, 128) + skip
    conv3   block(128, 256) + MaxPool2d(2)          -> 7x7
    conv4   block(256, 256) + MaxPool2d(2)          -> 3x3
    res2    block(256, 256), block(256, 256) + skip
    classifier  MaxPool2d(2) | global average, Flatten, [Dropout], Linear(256, classes)

Images of other sizes change the pooled sizes: the max head's linear layer takes 256 times the
pixels left after four pools (1x1 at 28x28, 2x2 at 32x32); ``schema.check`` says which sizes fit.

The state_dict keys match ``xpnet.reference.TorchResNet9`` built with the same arguments.
"""

from __future__ import annotations

import numpy

from xpnet.functional import Workspace
from xpnet.nn import (
    BatchCounters,
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
    Scale,
    Sequential,
)

from xpnet.models import schema
from xpnet.models.schema import CHANNELS, HEADS, RES_BLOCKS, SHORTCUTS  # noqa: F401


def block(c_in, c_out, rng, pool=False, workspace=None, input_grad=True):
    """Conv3x3(pad 1) + BatchNorm2d + ReLU, optionally followed by MaxPool2d(2, 2), run fused
    (``input_grad``: as ``ConvBlock``'s)."""
    layers = [Conv2d(c_in, c_out, 3, padding=1, rng=rng), BatchNorm2d(c_out), ReLU()]
    if pool:
        layers.append(MaxPool2d(2, 2))
    return ConvBlock(*layers, workspace=workspace, input_grad=input_grad)


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


def stage_table(in_channels: int, channels, res_blocks: int, shortcut: str) -> list[tuple]:
    """The stages of ResNet-9 in order, as both builders (``ResNet9`` and the PyTorch twin,
    ``xpnet.reference.TorchResNet9``) read them: (name, kind, channels in, channels out, arg),
    where kind "block" is conv3x3 + BatchNorm + ReLU (arg: a 2x2 max-pool after it), "residual"
    two blocks and a skip (arg: the skip, "identity" or "conv"), "pool2" two 2x2 max-pools.
    channels: the four stages' widths (c1, c2, c3, c4), already scaled."""
    c1, c2, c3, c4 = channels
    table = [("conv1", "block", in_channels, c1, False), ("conv2", "block", c1, c2, True),
             ("res1", "residual", c2, c2, shortcut)]
    if res_blocks == 2:
        return table + [("conv3", "block", c2, c3, True), ("conv4", "block", c3, c4, True),
                        ("res2", "residual", c4, c4, shortcut)]
    # Three residual blocks: conv3/conv4 become a residual block 128->256 with a conv skip.
    return table + [("res2", "residual", c2, c3, "conv"), ("pool2", "pool2", c3, c3, None),
                    ("res3", "residual", c3, c4, shortcut)]


class ResNet9(Sequential):
    """x: (N, in_channels, H, W) -> logits (N, num_classes), (H, W) = ``image_size``.

    Args:
        width: multiplies every channel count (rounded, at least 1).
        shortcut: "identity" or "conv" (1x1 conv + BatchNorm on every skip path).
        res_blocks: 2, or 3 to turn the conv3/conv4 stage into a residual block 128->256 with a
            1x1-conv shortcut, followed by the stage's two pools.
        head: "max" (MaxPool2d(2) before the classifier) or "avg" (global average pooling).
        dropout: drop probability applied before the linear layer (0 for none).
        logit_scale: a constant the logits are multiplied by (``nn.Scale``; 1 for none). 1/8, as
            in Myrtle's DAWNBench ResNet-9, is the fast preset's.
        channels: the four base channel counts (default 64, 128, 256, 256), before ``width``.
        image_size: (H, W) of the input images (28x28 by default); the max head's linear layer
            follows it.
        rng: seed or ``numpy.random.Generator`` for the initial weights and dropout masks.

    Every argument is checked against ``schema`` (bounds included) before anything is allocated:
    ModelConfigError names the first bad one. ``backward`` fills the parameters' gradients and
    returns None: the first block computes no gradient for the images (set
    ``model.conv1.input_grad = True`` for one).
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
        logit_scale=1.0,
        channels=CHANNELS,
        image_size=(28, 28),
        rng=None,
    ):
        config = schema.check(
            dict(in_channels=in_channels, width=width, shortcut=shortcut, res_blocks=res_blocks,
                 head=head, dropout=dropout, logit_scale=logit_scale, channels=list(channels),
                 image_size=list(image_size)),
            num_classes, prefix="ResNet9",
        )
        rng = numpy.random.default_rng(rng)
        c1, c2, c3, c4 = (max(1, round(c * width)) for c in channels)
        # The blocks run one at a time, so they can share their scratch buffers.
        ws = Workspace()

        # The images need no gradient: the first block skips its input gradient (a GEMM and nine
        # strided adds a chunk), so ``backward`` returns None.
        make = {
            "block": lambda name, c_in, c_out, pool: block(c_in, c_out, rng, pool=pool, workspace=ws,
                                                           input_grad=name != "conv1"),
            "residual": lambda name, c_in, c_out, skip: residual(c_in, c_out, skip, rng, workspace=ws),
            "pool2": lambda *_: Sequential(MaxPool2d(2, 2), MaxPool2d(2, 2)),
        }
        stages = {name: make[kind](name, c_in, c_out, arg)
                  for name, kind, c_in, c_out, arg in stage_table(in_channels, (c1, c2, c3, c4), res_blocks, shortcut)}
        pool = MaxPool2d(2, 2) if head == "max" else GlobalAvgPool2d()
        tail = [pool, Flatten()]
        if dropout > 0:
            tail.append(Dropout(dropout, rng=rng))
        tail.append(Linear(schema.head_features(c4, image_size, head), num_classes, rng=rng))
        if logit_scale != 1.0:
            tail.append(Scale(logit_scale))
        stages["classifier"] = Sequential(*tail)
        super().__init__(stages)
        object.__setattr__(self, "batch_counters", BatchCounters(self))
        object.__setattr__(
            self,
            "config",
            dict(num_classes=num_classes, **config),
        )

    @classmethod
    def from_config(cls, model_config: dict, num_classes: int, rng=None):
        """The model a stored config describes, checked first (unknown keys, types, bounds)."""
        return cls(num_classes=num_classes, rng=rng, **schema.check(model_config, num_classes))

    def forward(self, x):
        if self.training:
            self.batch_counters.count()
        return super().forward(x)
