"""Which data folder a command reads, and whether it may create one and download into it.

The rule (``xpnet train``, ``evaluate`` and ``report`` follow it): a folder the user named
(``--data-dir``, ``$XPNET_DATA``, or the one stored in a checkpoint being resumed) must exist, so a
typo never turns into a new folder with a download in it, and a folder stored in a checkpoint (it
could name any folder at all) is never downloaded into; only the default ``./data/mnist`` is
created and filled by a download. A stored folder that is the default folder counts as the default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

from xpnet.data.mnist import _HELP, DataError, default_data_dir, load_mnist, load_split

STORED = "the run's data folder (stored in its checkpoint)"


@dataclasses.dataclass(frozen=True)
class DataFolder:
    """path: the folder; may_create: whether it may be created for a download (the default folder
    only); origin: what named it ("--data-dir", "$XPNET_DATA", ``STORED``; None for the default)."""

    path: Path
    may_create: bool
    origin: str | None

    @classmethod
    def choose(cls, flag=None, stored=None) -> DataFolder:
        """The folder of ``--data-dir`` (``flag``), else the run's ``stored`` one, else
        ``$XPNET_DATA``, else the default."""
        if flag is not None:
            return cls(Path(flag), False, "--data-dir")
        if stored:
            if _same_place(stored, default_data_dir()):
                return cls(default_data_dir(), True, None)
            return cls(Path(stored), False, STORED)
        if os.environ.get("XPNET_DATA"):
            return cls(Path(os.environ["XPNET_DATA"]), False, "$XPNET_DATA")
        return cls(default_data_dir(), True, None)

    def check(self) -> None:
        """Refuse a named folder that does not exist (DataError, one line)."""
        if not self.may_create and not self.path.is_dir():
            hint = "; pass --data-dir" if self.origin == STORED else ""
            raise DataError(f"{self.origin} {self.path}: no such folder{hint}")

    def load(self, progress=False):
        """The four files as an ``MNIST``, downloaded where the rule allows."""
        self.check()
        with data_hint(self.path, self.origin):
            return load_mnist(self.path, download=self.origin != STORED, progress=progress)

    def load_test(self, progress=False):
        """The two t10k files -> (images (N, H, W) uint8, labels (N,))."""
        self.check()
        with data_hint(self.path, self.origin):
            return load_split(self.path, "test", download=self.origin != STORED, progress=progress)

    def __str__(self) -> str:
        return str(self.path)


@contextlib.contextmanager
def data_hint(folder, origin):
    """For a folder the user named, a failed download's hint says to fill that folder, not to
    name one with --data-dir."""
    try:
        yield
    except DataError as e:
        text = str(e)
        if origin and text.endswith(_HELP):
            raise DataError(f"{text[: -len(_HELP)]}copy the four MNIST IDX files into {folder}, the folder "
                            f"{origin} names") from None
        raise


def _same_place(a, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError, ValueError):
        return False
