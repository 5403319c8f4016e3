"""What each ``xpnet`` command needs beyond NumPy, checked before it starts any work.

All of it comes with ``pip install xpnet``; an install that lacks a piece (``pip install --no-deps``,
a package removed since) learns so in one line before training, not with a traceback at its end.
The array core (``xpnet.backend``, ``functional``, ``nn``, ``models``) needs none of it.
"""

from __future__ import annotations

import importlib.util

# import name -> pip name
PIP_NAMES = {"PIL": "pillow"}

NEEDS = {
    "train": ("tqdm", "pooch", "threadpoolctl", "safetensors", "matplotlib"),
    "evaluate": ("tqdm", "pooch", "threadpoolctl", "safetensors"),
    "predict": ("PIL", "threadpoolctl", "safetensors"),
    "bench": ("threadpoolctl",),
}


def missing(command: str, plots: bool = True) -> list[str]:
    """pip names of the packages ``command`` needs that cannot be imported here."""
    names = [n for n in NEEDS.get(command, ()) if plots or n != "matplotlib"]
    return [PIP_NAMES.get(n, n) for n in names if importlib.util.find_spec(n) is None]


def message(command: str, absent: list[str]) -> str:
    return (
        f"this install lacks {', '.join(absent)}, which xpnet {command} needs: "
        f"pip install xpnet brings them (or pip install {' '.join(absent)})"
    )
