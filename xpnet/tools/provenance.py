"""What produced a run folder, recorded in its ``summary.json``: the xpnet version and, run from a
clone, its git commit; the data folder and the SHA-256 of each of its files; the backend, the
kernel threads, the CPU model and PyTorch's OpenMP wait policy; the command line."""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
from pathlib import Path


def git_commit(root=None) -> str | None:
    """The commit checked out in the clone xpnet runs from (with '-dirty' when tracked files
    changed), or None for an installed copy or where git is not at hand."""
    root = Path(__file__).resolve().parents[2] if root is None else Path(root)
    if not (root / ".git").exists():  # an installed wheel has no repository around it
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_files(folder) -> dict:
    """{file name: SHA-256 of its bytes as stored} for the IDX files (plain or gzipped) in ``folder``."""
    folder = Path(folder)
    return {p.name: file_sha256(p) for p in sorted(folder.iterdir())
            if p.is_file() and "-idx" in p.name}


def provenance(data_dir=None, argv=None) -> dict:
    """The record for ``summary.json``; ``argv``: the arguments after ``xpnet``."""
    from xpnet import __version__, backend
    from xpnet.functional import parallel
    from xpnet.tools.machine import cpu_info

    cpu = cpu_info()
    return dict(
        xpnet_version=__version__,
        git_commit=git_commit(),
        command=None if argv is None else shlex.join(["xpnet", *map(str, argv)]),
        data_dir=None if data_dir is None else str(Path(data_dir).resolve()),
        data_files=None if data_dir is None else data_files(data_dir),
        backend=backend.name(),
        threads=parallel.threads(),
        cpu_model=cpu["model"],
        cpu_cores=cpu["cores"],
        # How PyTorch's OpenMP threads waited, for a --framework torch run (xpnet sets PASSIVE).
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
    )
