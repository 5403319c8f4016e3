"""Models built from ``xpnet.nn``."""

from xpnet.models.resnet9 import ResNet9

__all__ = ["ResNet9"]
