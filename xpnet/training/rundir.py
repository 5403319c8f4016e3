"""Run folders and resuming: where a run writes, what may overwrite what, what a resume may change.

A run folder holds one run: ``last``/``best`` checkpoints, ``metrics.csv``, ``losses.csv``, ``summary.json`` and
the figures. The rules ``xpnet train`` follows:

- One process per run folder, for the whole run: ``claim`` takes an exclusive lock
  (``fcntl.flock`` on ``FOLDER/.xpnet.lock``, which holds the holder's pid), and a second run
  into the same folder, or a resume of a run still going, is refused naming that process. The OS
  drops the lock when its process ends, however it ends, so a crash leaves no stale lock. Under
  MPI rank 0 holds it.
- A new run without ``--out`` gets the first free ``runs/run-N``, claimed by making it
  (``mkdir`` fails for all but one of two runs started together). A new run's ``--out`` may not
  hold another run, unless ``--overwrite`` is given (which clears that run's files first); that
  is checked under the lock. ``--out`` naming a file, a folder under a file or one that cannot be
  written is refused before any data is read.
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
  has no total and may be extended (or shortened down to the batches already done). ``--epochs``
  takes a real: 1.3 epochs train ``round(1.3 x steps per epoch)`` steps, the last epoch partial.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the folder checks still apply
    fcntl = None

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


LOCK_FILE = ".xpnet.lock"


class RunLock:
    """This process's exclusive hold on a run folder (see the module doc); ``release`` ends it."""

    def __init__(self, folder: Path, fd: int | None, created: bool):
        self.folder, self._fd, self.created = folder, fd, created

    @classmethod
    def take(cls, folder, created=False) -> RunLock:
        folder = Path(folder)
        path = folder / LOCK_FILE
        if fcntl is None:
            return cls(folder, None, created)
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise RunError(f"{folder}: cannot write there ({e.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _holder(fd)
                os.close(fd)
                raise RunError(
                    f"{folder} is in use by another xpnet run (process {holder}); wait for it to end, "
                    f"or pass --out NEW_FOLDER"
                ) from None
            # A holder that removed the file between our open and our lock leaves us locking a
            # file nobody else will see: lock the one now at the path instead.
            try:
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return cls(folder, fd, created)

    def release(self) -> None:
        """End the hold: the lock file goes (removed while still locked; a run that opened it
        meanwhile finds it gone and takes a new one), and so does the folder the claim made if
        the run left nothing in it (it failed before its first file)."""
        if self._fd is None and fcntl is not None:
            return
        try:
            (self.folder / LOCK_FILE).unlink(missing_ok=True)
            if self.created and not any(self.folder.iterdir()):
                self.folder.rmdir()
        except OSError:
            pass
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _holder(fd) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


def claim(out=None, root="runs") -> RunLock:
    """The run folder this process will write, locked: ``out`` (made if missing), or without one
    the first ``root/run-N`` this call can make. RunError, naming the path, when it cannot be a
    folder or cannot be written, or when another run holds it."""
    if out is None:
        root = Path(root)
        _make_folder(root, "runs folder")
        for n in itertools.count(1):
            folder = root / f"run-{n}"
            try:
                os.mkdir(folder)
            except FileExistsError:
                continue
            except OSError as e:
                raise RunError(f"{folder}: cannot make the run folder ({e.strerror})") from None
            return RunLock.take(folder, created=True)
    out = Path(out)
    created = not os.path.lexists(out)
    _make_folder(out, "--out")
    return RunLock.take(out, created=created)


def _make_folder(folder: Path, what: str) -> None:
    if os.path.lexists(folder) and not folder.is_dir():
        raise RunError(f"{what} {folder}: not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"{what} {folder}: cannot make the folder ({e.strerror})") from None


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


def check_new_epochs(meta: dict, epochs, steps_per_epoch: int) -> None:
    """Refuse a new total of ``epochs`` (an int or a real) for the run whose checkpoint metadata
    is ``meta``."""
    from xpnet.training.config import TrainConfig, epochs_text
    from xpnet.training.runner import build_schedule, total_steps

    config, done, shown = meta["config"], int(meta["epoch"]), epochs_text(epochs)
    if epochs == config["epochs"]:
        return
    # Where the run stands, in batches (the last epoch of a real number of epochs is partial).
    old = total_steps(config["epochs"], steps_per_epoch)
    at = min(done * steps_per_epoch, old) + int(meta.get("batch", 0))
    if total_steps(epochs, steps_per_epoch) < at:
        raise RunError(f"--epochs {shown} is fewer than the {epochs_text(at / steps_per_epoch)} epochs this run "
                       f"has done")
    if old % steps_per_epoch and done * steps_per_epoch > old:
        raise RunError(f"--epochs {shown}: this run ended inside epoch {done}, after {old % steps_per_epoch} of "
                       f"its batches, so it cannot go on; start a new run with --epochs {shown}")
    schedule = config["schedule"]
    if schedule not in EXTENDABLE_SCHEDULES:
        cfg = TrainConfig.from_dict(config)
        step = int(meta["step"])
        now = build_schedule(cfg, steps_per_epoch)(step)
        new = build_schedule(TrainConfig.from_dict({**config, "epochs": epochs}), steps_per_epoch)(step)
        raise RunError(
            f"--epochs {shown}: this run's {schedule} learning rate is laid out over its "
            f"{epochs_text(config['epochs'])} epochs, and a new total would move its next step's rate from "
            f"{now:.2g} to {new:.2g}; only a constant schedule can be extended, so start a new run "
            f"with --epochs {shown}"
        )


# -- the run folder ------------------------------------------------------------------------------

# metrics.csv's columns; lr is the epoch's last learning rate, lr_mean and lr_max show what the
# schedule did within it.
METRICS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds", "lr",
           "lr_mean", "lr_max")


class RunFolder:
    """One run's folder and every file in it: the ``last``/``best`` checkpoints, ``metrics.csv``
    (a row an epoch), ``losses.csv`` (a row a step), ``summary.json`` and the figures. Each file
    is replaced whole (written beside it, then renamed), so a killed run leaves the previous one."""

    def __init__(self, path):
        self.path = Path(path)
        self.lock = None  # the RunLock of a folder this process holds (``claim``)
        self.last = self.path / "last.safetensors"
        self.best = self.path / "best.safetensors"
        self.metrics = self.path / "metrics.csv"
        self.losses = self.path / "losses.csv"
        self.summary = self.path / "summary.json"

    def __str__(self) -> str:
        return str(self.path)

    def holds_run(self) -> bool:
        return holds_run(self.path)

    def check(self, resume=None, overwrite=False) -> None:
        """Refuse a folder holding another run (see the module doc), before anything is done."""
        check_out(self.path, resume=resume, overwrite=overwrite)

    def claim(self, keep=None, overwrite=False) -> None:
        """Make the folder this run's, once every check has passed: with ``overwrite`` the other
        run's files go (except ``keep``, the checkpoint being resumed). The one place where a run
        takes its folder."""
        if overwrite:
            clear(self.path, keep=keep)
        self.path.mkdir(parents=True, exist_ok=True)

    def save(self, runner, meta: dict, best: bool = False) -> None:
        """The runner's state and ``meta`` as the ``last`` checkpoint, and as ``best`` too."""
        from xpnet import checkpoint

        arrays, opt_scalars = runner.state()
        meta = {**meta, "optimizer_state": opt_scalars}
        for path in (self.last, self.best) if best else (self.last,):
            checkpoint.save(path, arrays, meta)

    def write_metrics(self, history: list[dict]) -> None:
        rows = [{k: row.get(k, "") for k in METRICS} for row in history]  # older rows may lack a column
        _write_csv(self.metrics, METRICS, rows)

    def write_losses(self, first_step: int, losses: list) -> None:
        """The loss of every step from ``first_step`` on replaces what the file held from there, so
        a resumed run rewrites what its checkpoint had not kept."""
        rows = [r for r in _read_csv(self.losses) if int(r["step"]) < first_step]
        rows += [dict(step=first_step + i, loss=float(v)) for i, v in enumerate(losses)]
        _write_csv(self.losses, ("step", "loss"), rows)

    def write_summary(self, summary: dict) -> None:
        _replace(self.summary, json.dumps(summary, indent=2) + "\n")

    def finished(self, epochs) -> dict | None:
        """The summary of a run that has done its ``epochs`` (summary.json holds the config's
        number once the run has ended: 1.3 after a partial last epoch), else None."""
        if not self.summary.exists():
            return None
        summary = json.loads(self.summary.read_text())
        return summary if summary.get("epochs") == epochs else None

    def history(self) -> dict:
        """A finished run's last row: test and train accuracy, train loss, seconds, and the
        loss of every step."""
        summary = json.loads(self.summary.read_text())
        last = _read_csv(self.metrics)[-1]
        return dict(
            test_accuracy=float(summary["test_accuracy"]),
            train_accuracy=float(last["train_accuracy"]),
            train_loss=float(last["train_loss"]),
            seconds=float(summary["seconds"]),
            losses=[float(r["loss"]) for r in _read_csv(self.losses)],
        )


def _read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_csv(path: Path, fields, rows) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- a checkpoint to resume ----------------------------------------------------------------------


@dataclasses.dataclass
class Position:
    """Where a run stands: the epoch in progress, the batches of it done, the finished epochs'
    rows, the best test accuracy so far, the generator's state at the start of that epoch (None:
    the generator as it is) and, inside an epoch, its state after the last batch done (what
    dropout drew since; None in a checkpoint older than that field)."""

    epoch: int = 0
    batch: int = 0
    history: list = dataclasses.field(default_factory=list)
    best: float = -1.0
    rng_state: dict | None = None
    rng_state_now: dict | None = None


class Resume:
    """A training checkpoint to continue from, read once (by rank 0 under MPI; the others are
    sent what it read) and handed to ``fit``: the run's config, its position, and its state."""

    def __init__(self, path, arrays: dict, meta: dict):
        self.path, self.arrays, self.meta = Path(path), arrays, meta

    @classmethod
    def read(cls, path, comm=None, read=None) -> Resume:
        """``read(path) -> (arrays, meta)``, its metadata checked field by field:
        ``training.runner.read_run`` unless given."""
        from xpnet import distributed
        from xpnet.training.runner import read_run

        comm = distributed.Solo() if comm is None else comm
        arrays, meta = comm.from_root(read or read_run, path)  # rank 0 reads and checks, the others are told
        return cls(path, arrays, meta)

    def config(self, epochs=None):
        """The run's ``TrainConfig``; ``epochs``, when given, its new total."""
        from xpnet.training.config import TrainConfig

        cfg = TrainConfig.from_dict(self.meta["config"])
        if epochs is not None:
            cfg.epochs = epochs
        return cfg

    def conflicts(self, given: dict) -> str | None:
        """The line refusing the flags of ``given`` that would change the run (``--epochs`` aside,
        which ``check_epochs`` rules on), or None."""
        return conflicts(self.meta["config"], {k: v for k, v in given.items() if k != "epochs"})

    def check_epochs(self, epochs, steps_per_epoch: int) -> None:
        check_new_epochs(self.meta, epochs, steps_per_epoch)

    def position(self) -> Position:
        m = self.meta
        return Position(int(m["epoch"]), int(m["batch"]), list(m["history"]), float(m["best_accuracy"]),
                        m["rng_state"], m.get("rng_state_now"))

    def restore(self, runner) -> None:
        """The checkpoint's weights and optimizer state into ``runner``, once their names, shapes,
        dtypes and values are checked against the runner's own."""
        from xpnet import checkpoint

        checkpoint.check_tensors(self.path, self.arrays, runner.state()[0], prefix="")
        try:
            runner.load_state(self.arrays, self.meta["optimizer_state"])
        except checkpoint.CheckpointError as e:
            raise checkpoint.CheckpointError(f"{self.path}: {e}") from e
