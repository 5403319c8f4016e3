"""xpnet: ResNet-9 with every forward and backward pass written by hand, on NumPy or CuPy.

Subpackages: ``backend`` (the NumPy/CuPy seam), ``functional`` (pure array math), ``nn``
(modules), ``optim`` (optimizers and schedules), ``models`` (ResNet-9) and, with torch installed,
``reference`` (the PyTorch twin used by tests and benchmarks).
"""

__version__ = "0.1.0"
