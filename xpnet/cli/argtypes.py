"""Argument types shared by the command-line parsers: each turns a flag's text into a value or
raises argparse's error, which the parser prints as one usage line (exit 2)."""

from __future__ import annotations

import argparse
import math


def positive_int(text):
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def nonneg_int(text):
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return v


def seed(text):
    """A generator seed: a non-negative integer (NumPy refuses negative ones)."""
    v = int(text)
    if not 0 <= v < 2**128:
        raise argparse.ArgumentTypeError(f"must be an integer in 0..2**128-1, got {text}")
    return v


def nonneg_float(text):
    v = float(text)
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a finite non-negative number, got {text}")
    return v


def positive_float(text):
    v = float(text)
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {text}")
    return v


def momentum(text):
    """SGD momentum: in [0, 1); at 1 or above the velocity grows without bound."""
    v = float(text)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


def probability(text):
    v = float(text)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v
