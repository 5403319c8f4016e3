"""Models built from ``xpnet.nn``."""

from xpnet.models.report2 import Report2Net
from xpnet.models.resnet9 import ResNet9

__all__ = ["Report2Net", "ResNet9", "build_model"]


def build_model(model_config: dict, num_classes: int, rng) -> ResNet9:
    """The network a checkpoint's or a ``TrainConfig``'s ``model_config`` describes, its initial
    weights drawn from the host generator ``rng``."""
    return ResNet9.from_config(model_config, num_classes, rng)
