"""The PyTorch twin of xpnet's ResNet-9: a reference for tests and benchmarks only.

Importing this package needs torch (``pip install 'xpnet[test]'``); ``import xpnet`` never does.
"""

try:
    import torch  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "xpnet.reference needs PyTorch: pip install 'xpnet[test]' (torch==2.13.0)"
    ) from e

from xpnet.reference.resnet9 import TorchResNet9, to_torch_state

__all__ = ["TorchResNet9", "to_torch_state"]
