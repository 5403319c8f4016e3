"""Scratch arrays that a caller owns and lends to the kernels, so hot loops don't reallocate.

A layer (or a whole model) keeps one ``Workspace`` and passes it to the functions that take
``ws=``; a function given ``ws=None`` allocates fresh scratch instead. A buffer is never returned
to the caller: what a function returns is always freshly allocated.

A buffer is looked up by name, dtype and array module, and one name serves every shape: its
memory grows to the largest request and smaller ones get a view of it, so the layers of a model
that share a workspace share its scratch too. A buffer whose contents must persist between calls
(a zero border that is never written) is kept per shape instead.
"""

from __future__ import annotations

import math

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
        shape = tuple(shape)
        if zero:
            key = (name, shape, numpy.dtype(dtype).str, xp.__name__)
            a = self._arrays.get(key)
            if a is None:
                a = self._arrays[key] = xp.zeros(shape, dtype=dtype)
            return a
        key = (name, numpy.dtype(dtype).str, xp.__name__)
        size = math.prod(shape)
        flat = self._arrays.get(key)
        if flat is None or flat.size < size:
            flat = self._arrays[key] = xp.empty(size, dtype=dtype)
        return flat[:size].reshape(shape)

    def constant(self, xp, name, dtype, make):
        """The array ``make()`` returns (host data), moved to module ``xp`` once and kept under
        ``name``: a constant table crosses to the device on the first call, not on every call."""
        key = ("constant", name, numpy.dtype(dtype).str, xp.__name__)
        a = self._arrays.get(key)
        if a is None:
            a = self._arrays[key] = xp.asarray(make(), dtype=dtype)
        return a

    def clear(self):
        self._arrays.clear()

    @property
    def nbytes(self):
        return sum(a.nbytes for a in self._arrays.values())
