"""Models built from ``xpnet.nn``."""

from xpnet.models import schema
from xpnet.models.report2 import Report2Net
from xpnet.models.resnet9 import ResNet9

__all__ = ["ARCHITECTURES", "Report2Net", "ResNet9", "build_model"]

# The networks a model config's "arch" names.
ARCHITECTURES = {"resnet9": ResNet9, "report2": Report2Net}


def build_model(model_config: dict, num_classes: int, rng):
    """The network a checkpoint's or a ``TrainConfig``'s ``model_config`` describes (its "arch",
    ResNet-9 where it names none), its initial weights drawn from the host generator ``rng``."""
    return ARCHITECTURES[schema.arch(model_config)].from_config(model_config, num_classes, rng)
