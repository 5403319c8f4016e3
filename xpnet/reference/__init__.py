"""The PyTorch twins of xpnet's models (ResNet-9, the second report's net): the reference for
tests, benchmarks and twin runs.

Importing this package needs torch (``pip install 'xpnet[reference]'``); ``import xpnet`` never does.
``TorchRunner`` (in ``runner``) trains the twin under ``xpnet.training.loop.fit``.
"""

try:
    import torch  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "the PyTorch twin needs torch: pip install 'xpnet[reference]' (torch==2.13.0)"
    ) from e

from xpnet.reference.pooling import max_pool2d_sharing_ties
from xpnet.reference.report2 import TorchReport2Net
from xpnet.reference.resnet9 import TorchResNet9, to_torch_state

__all__ = ["TorchReport2Net", "TorchResNet9", "max_pool2d_sharing_ties", "to_torch_state"]
