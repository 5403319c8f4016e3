"""The one base class of every error a user can cause, and how a message is kept to one line.

Every module that can refuse what a user gave it (flags, data, a checkpoint, a run folder, a
backend, an MPI launch, a report) raises its own subclass of ``XpnetError``; each command catches
``XpnetError`` once and prints its message as one line, without a traceback, and exits 1. The
subclasses keep the builtin they were before (``ValueError``, ``RuntimeError``) as a second base,
so code that caught those still does.
"""

from __future__ import annotations


class XpnetError(Exception):
    """An error the user can cause and fix: reported as one line, without a traceback."""


class UserError(XpnetError):
    """A command line the user must change (a flag that does not fit the run, a missing file)."""


def one_line(e: BaseException, limit: int = 300) -> str:
    """``e``'s message on one line (every run of whitespace one space), at most ``limit`` characters;
    for quoting a library's multi-line error inside our own."""
    return " ".join(str(e).split())[:limit]
