"""Argument types shared by the command-line parsers: each turns a flag's text into a value or
raises argparse's error, which the parser prints as one usage line (exit 2)."""

from __future__ import annotations

import argparse
import math


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser, but a usage error is one line that points at --help, not a usage block
    (its subcommands' parsers are of the same class)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        ns, extras = self.parse_known_args(args, namespace)
        if extras:  # named after the subcommand they were given to, not the top parser
            command = getattr(ns, "command", None)
            prog = f"{self.prog} {command}" if command else self.prog
            self.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(extras)} (see {prog} --help)\n")
        return ns


def _parse(cast, text, what):
    """``cast(text)``, or argparse's error in the user's words (not the function's name)."""
    try:
        return cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def positive_int(text):
    v = _parse(int, text, "a positive integer")
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def epoch_count(text):
    """A number of epochs: a positive integer, or a positive real (1.3: one epoch and 30 % of the
    next); a whole real (2.0) is the integer."""
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        pass
    v = _parse(float, text, "a positive number of epochs")
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a positive number of epochs, got {text}")
    return int(v) if v.is_integer() else v


def nonneg_int(text):
    v = _parse(int, text, "a non-negative integer")
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return v


def seed(text):
    """A generator seed: a non-negative integer (NumPy refuses negative ones)."""
    v = _parse(int, text, "an integer in 0..2**128-1")
    if not 0 <= v < 2**128:
        raise argparse.ArgumentTypeError(f"must be an integer in 0..2**128-1, got {text}")
    return v


def nonneg_float(text):
    v = _parse(float, text, "a finite non-negative number")
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a finite non-negative number, got {text}")
    return v


def positive_float(text):
    v = _parse(float, text, "a finite positive number")
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {text}")
    return v


def width(text):
    """A channel multiplier: positive, finite, at most the model schema's bound."""
    from xpnet.models.schema import MAX_WIDTH

    v = positive_float(text)
    if v > MAX_WIDTH:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_WIDTH:g}, got {text}")
    return v


def momentum(text):
    """SGD momentum: in [0, 1); at 1 or above the velocity grows without bound."""
    v = _parse(float, text, "a number in [0, 1)")
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


def probability(text):
    v = _parse(float, text, "a number in [0, 1)")
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v
