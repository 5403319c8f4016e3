"""Run folders and resuming: where a run writes, what may overwrite what, what a resume may change.

A run folder holds one run: ``last``/``best`` checkpoints, ``metrics.csv``, ``losses.csv``, ``summary.json`` and
the figures. The rules ``xpnet train`` follows:

- A new run without ``--out`` gets the first free ``runs/run-N``. A new run's ``--out`` may not
  hold another run, unless ``--overwrite`` is given (which clears that run's files first).
- ``--resume CHECKPOINT`` continues the run in the checkpoint's folder, on the data folder stored in
  the checkpoint; ``--out`` and ``--data-dir`` override them (the same rule about other runs applies
  to that ``--out``). Resuming a checkpoint other than its folder's ``last`` would overwrite the
  later ``last``, so that needs ``--out`` elsewhere or ``--overwrite``.
- A resume keeps the run's recipe: a flag that sets a config value differently from the stored
  one is refused (same value: accepted). What a resume may change: ``--epochs`` (see below),
  ``--stop-after``, ``--data-dir``, ``--out``, ``--backend``, ``--no-plots``, ``--overwrite``.
- ``--epochs`` on a resume: the one-cycle, cosine and step schedules are laid out over the run's
  total number of steps, so a new total would make the learning rate jump (a finished 4-epoch
  one-cycle run on MNIST ends near 4e-7; stretched to 8 epochs, its next step would be near
  0.075). Such a run cannot be extended; start a new run with more epochs. A constant schedule
  has no total and may be extended (or shortened down to the epochs already done).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from xpnet.errors import XpnetError

# What a run writes; a folder holding any of the first four holds a run.
RUN_FILES = ("last.safetensors", "best.safetensors", "metrics.csv", "summary.json", "losses.csv")
FIGURES = ("curves.png", "failures.png", "confusion.png")

# Flags a resume may set to any value (the rest set the stored config and must agree with it).
RESUME_MAY_CHANGE = ("--epochs", "--stop-after", "--data-dir", "--out", "--backend", "--no-plots",
                     "--overwrite")

# Schedules whose learning rate at a step does not depend on the run's total length.
EXTENDABLE_SCHEDULES = ("constant",)


class RunError(XpnetError, ValueError):
    """A run folder or resume request that xpnet refuses (one line, says what to do instead)."""


def holds_run(folder) -> bool:
    """Whether ``folder`` holds (part of) a run's output."""
    folder = Path(folder)
    return any((folder / name).exists() for name in RUN_FILES)


def fresh_folder(root="runs") -> Path:
    """The first ``root/run-N`` (N = 1, 2, ...) that does not exist yet."""
    for n in itertools.count(1):
        folder = Path(root) / f"run-{n}"
        if not folder.exists():
            return folder


def check_out(out, resume=None, overwrite=False) -> None:
    """Refuse to write into ``out`` when that would overwrite another run (see the module doc)."""
    out = Path(out)
    if overwrite or not holds_run(out):
        return
    last = out / RUN_FILES[0]
    if resume is not None and last.exists() and (_same_file(resume, last) or _same_bytes(resume, last)):
        return  # best equal to last, byte for byte, continues the same run
    if resume is not None and last.exists():
        raise RunError(
            f"{out} holds a later {last.name} that resuming {resume} there would overwrite; resume "
            f"{last}, or pass --out NEW_FOLDER (or --overwrite)"
        )
    raise RunError(f"{out} holds another run; pass --out NEW_FOLDER, or --overwrite to replace it")


def clear(out, keep=None) -> None:
    """Remove a run's files from ``out`` (for --overwrite), except the file ``keep``."""
    for name in RUN_FILES + FIGURES:
        path = Path(out) / name
        if path.exists() and not (keep is not None and _same_file(keep, path)):
            path.unlink()


def _same_bytes(a, b) -> bool:
    import filecmp

    try:
        return filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def conflicts(stored: dict, given: dict) -> str | None:
    """One line naming each flag of ``given`` (config name -> value) that differs from ``stored``
    (the checkpoint's config), or None when they agree."""
    bad = [(k, v) for k, v in given.items() if k in stored and stored[k] != v]
    if not bad:
        return None
    flags = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in bad)
    kept = ", ".join(f"{k.replace('_', '-')} {stored[k]}" for k, _ in bad)
    return (
        f"{flags} would change the run being resumed ({kept}); a resume keeps its recipe and may "
        f"change only {', '.join(RESUME_MAY_CHANGE)}"
    )


def check_new_epochs(meta: dict, epochs: int, steps_per_epoch: int) -> None:
    """Refuse a new total of ``epochs`` for the run whose checkpoint metadata is ``meta``."""
    from xpnet.training.config import TrainConfig
    from xpnet.training.runner import build_schedule

    config, done = meta["config"], int(meta["epoch"])
    if epochs == config["epochs"]:
        return
    if epochs < done:
        raise RunError(f"--epochs {epochs} is fewer than the {done} epochs this run has done")
    schedule = config["schedule"]
    if schedule not in EXTENDABLE_SCHEDULES:
        cfg = TrainConfig.from_dict(config)
        step = int(meta["step"])
        now = build_schedule(cfg, steps_per_epoch)(step)
        new = build_schedule(TrainConfig.from_dict({**config, "epochs": epochs}), steps_per_epoch)(step)
        raise RunError(
            f"--epochs {epochs}: this run's {schedule} learning rate is laid out over its "
            f"{config['epochs']} epochs, and a new total would move its next step's rate from "
            f"{now:.2g} to {new:.2g}; only a constant schedule can be extended, so start a new run "
            f"with --epochs {epochs}"
        )
