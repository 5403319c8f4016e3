"""Models built from ``xpnet.nn``."""

from xpnet.models.report2 import Report2Net
from xpnet.models.resnet9 import ResNet9

__all__ = ["Report2Net", "ResNet9"]
