"""Scratch arrays that a caller owns and lends to the kernels, so hot loops don't reallocate.

A layer (or a whole model) keeps one ``Workspace`` and passes it to the functions that take
``ws=``; a function given ``ws=None`` allocates fresh scratch instead. A buffer is looked up by
name, shape, dtype and array module, so one workspace can serve layers of different sizes, and
it is never returned to the caller: what a function returns is always freshly allocated.
"""

from __future__ import annotations

import numpy


class Workspace:
    """A dictionary of reusable scratch arrays."""

    def __init__(self):
        self._arrays = {}

    def get(self, xp, name, shape, dtype, zero=False):
        """An array of ``shape`` and ``dtype`` reserved under ``name``.

        With ``zero`` it is zero-filled when first made and never cleared afterwards: callers use
        that for buffers whose untouched parts (a padding border) must stay zero across calls.
        """
        key = (name, tuple(shape), numpy.dtype(dtype).str, xp.__name__)
        a = self._arrays.get(key)
        if a is None:
            a = (xp.zeros if zero else xp.empty)(shape, dtype=dtype)
            self._arrays[key] = a
        return a

    def clear(self):
        self._arrays.clear()

    @property
    def nbytes(self):
        return sum(a.nbytes for a in self._arrays.values())
