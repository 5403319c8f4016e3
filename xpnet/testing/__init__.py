"""Test support that ships with the package: a strict, counting stand-in for CuPy.

``xpnet bench --backend cupy --dry-run`` uses it too, so it lives here rather than under tests/.
Nothing in this package is imported by xpnet itself unless asked for.
"""
