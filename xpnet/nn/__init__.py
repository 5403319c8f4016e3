"""Modules: parameters, caches and train/eval mode around ``xpnet.functional``."""

from xpnet.nn.blocks import ConvBlock, ConvReLU, ResidualReLU
from xpnet.nn.layers import (
    AvgPool2d,
    BatchCounters,
    BatchNorm2d,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Flatten,
    GlobalAvgPool2d,
    Linear,
    MaxPool2d,
    ReLU,
    Scale,
)
from xpnet.nn.module import Module, Parameter, Residual, Sequential

__all__ = [
    "AvgPool2d",
    "BatchCounters",
    "BatchNorm2d",
    "Conv2d",
    "ConvBlock",
    "ConvReLU",
    "CrossEntropyLoss",
    "Dropout",
    "Flatten",
    "GlobalAvgPool2d",
    "Linear",
    "MaxPool2d",
    "Module",
    "Parameter",
    "ReLU",
    "Residual",
    "ResidualReLU",
    "Scale",
    "Sequential",
]
