"""The training loop as a library function.

``fit(config, data, out_dir)`` trains a ResNet-9, evaluates it on the test set after every epoch
and writes ``metrics.csv``, ``summary.json``, the ``last``/``best`` checkpoints and the plots into
``out_dir``. Everything random comes from one host generator seeded by ``config.seed``; a
checkpoint holds its state as of the start of the epoch in progress, plus how many batches of that
epoch were done, so ``resume`` continues exactly where a run stopped, between epochs or in the
middle of one (Ctrl-C).
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy

from xpnet import backend, checkpoint, distributed
from xpnet.data import batches
from xpnet.training.config import CHECKPOINT_EXT, TrainConfig, TrainingError
from xpnet.training.runner import NonFiniteLoss, build_runner, build_schedule, read_run, save_state, train_step

# lr is the epoch's last learning rate; lr_mean and lr_max show what the schedule did within it.
METRICS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds", "lr",
           "lr_mean", "lr_max")


class _StopAtBatchEnd:
    """Turns the first Ctrl-C into a request honoured between batches, so the checkpoint holds a
    consistent state (no half-applied optimizer step); a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class LineProgress:
    """Progress as a plain line every ``every`` seconds, for a log file or a pipe where a bar's
    redraws would be noise: 'epoch 1/4: batch 120/469 (26%), loss 0.4123, lr 0.05, 31 s'.
    Takes tqdm's calls (update, set_postfix, close)."""

    def __init__(self, total, desc, log, every=30.0, clock=time.monotonic):
        self.total, self.desc, self.log, self.every, self.clock = total, desc, log, every, clock
        self.n, self.postfix = 0, {}
        self.start = self.last = clock()

    def update(self, n=1):
        self.n += n
        now = self.clock()
        if now - self.last >= self.every and self.n < self.total:
            self.last = now
            extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
            self.log(f"{self.desc}: batch {self.n}/{self.total} ({self.n / self.total:.0%}){extra}, "
                     f"{now - self.start:.0f} s")

    def set_postfix(self, **values):
        self.postfix = values

    def close(self):
        pass


def _progress(total, desc, enabled, log):
    """A tqdm bar where ``enabled`` (a terminal), else a line every 30 s through ``log``."""
    if not enabled:
        return LineProgress(total, desc, log)
    try:
        from tqdm import tqdm
    except ImportError:
        return LineProgress(total, desc, log)
    return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


def _write_metrics(out_dir: Path, history: list[dict]) -> None:
    tmp = out_dir / "metrics.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRICS)
        w.writeheader()
        for row in history:
            # Rows from checkpoints older than a column leave it empty.
            w.writerow({k: row.get(k, "") for k in METRICS})
    os.replace(tmp, out_dir / "metrics.csv")


def _write_losses(out_dir: Path, first_step: int, losses: list) -> None:
    """losses.csv: the training loss of every step; rows from ``first_step`` on are replaced, so a
    resumed run rewrites what its checkpoint had not kept."""
    path = out_dir / "losses.csv"
    rows = []
    if path.exists():
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) < first_step]
    rows += [dict(step=first_step + i, loss=float(v)) for i, v in enumerate(losses)]
    tmp = out_dir / "losses.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=("step", "loss"))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def fit(
    cfg: TrainConfig | None,
    data,
    out_dir,
    resume=None,
    epochs=None,
    stop_after=None,
    progress=None,
    log=print,
    plots=True,
    extra_meta=None,
    comm=None,
    provenance=None,
) -> dict:
    """Train on ``data`` (an ``xpnet.data.MNIST``) and write results into ``out_dir``.

    resume: path of a checkpoint written by an earlier ``fit``; the run continues with the config
    stored there (``cfg`` is ignored), except that ``epochs`` may set a new total. ``stop_after``
    ends this call after that many epochs while the schedule still spans the whole run, so
    "stop after 1, resume" equals one uninterrupted run. Returns the summary dict (also in
    summary.json). ``extra_meta``: more JSON-able entries for every checkpoint's metadata (the CLI
    stores the data folder there). ``provenance``: what produced the run (see
    ``xpnet.training.provenance``), kept in summary.json. Raises TrainingError on a non-finite loss; the last good
    checkpoint stays.

    comm: the data-parallel communicator (``xpnet.distributed``; default: one process). Every
    rank calls ``fit`` alike; rank 0 alone reads checkpoints, writes files and logs.
    """
    comm = distributed.Solo() if comm is None else comm
    out_dir = Path(out_dir)
    if comm.is_root:
        out_dir.mkdir(parents=True, exist_ok=True)
    else:
        log, progress = (lambda s: None), False
    progress = sys.stderr.isatty() if progress is None else progress
    num_classes = int(max(data.train_labels.max(), data.test_labels.max())) + 1
    num_classes = max(num_classes, 10)

    rng = numpy.random.default_rng(None if cfg is None else cfg.seed)
    start_epoch, start_batch, history, best, rng_state = 0, 0, [], -1.0, None
    if resume is not None:
        arrays, meta = comm.from_root(read_run, resume)  # rank 0 reads and checks, the others are told
        cfg = TrainConfig.from_dict(meta["config"])
        if tuple(cfg.image_size) != data.image_shape:
            raise TrainingError(
                f"{resume}: the run trained on {cfg.image_size} images, the data holds {data.image_shape}"
            )
        if epochs is not None:
            cfg.epochs = int(epochs)
        start_epoch, start_batch = int(meta["epoch"]), int(meta["batch"])
        history, best = list(meta["history"]), float(meta["best_accuracy"])
        rng_state = meta["rng_state"]
        # Built from our generator, so dropout draws from it; its state is restored below.
        runner = build_runner(cfg, int(meta["num_classes"]), rng)
        checkpoint.check_tensors(resume, arrays, runner.state()[0], prefix="")
        try:
            runner.load_state(arrays, meta["optimizer_state"])
        except checkpoint.CheckpointError as e:
            raise checkpoint.CheckpointError(f"{resume}: {e}") from e
    else:
        if epochs is not None:
            cfg = dataclasses.replace(cfg, epochs=int(epochs))
        # The classifier follows the images' size.
        cfg = dataclasses.replace(cfg, image_size=data.image_shape)
        runner = build_runner(cfg, num_classes, rng)

    train_images, train_labels = data.train_images, data.train_labels
    if cfg.train_subset:
        train_images, train_labels = train_images[: cfg.train_subset], train_labels[: cfg.train_subset]
    train_images, train_labels = backend.to_device(train_images), backend.to_device(train_labels)
    test_images, test_labels = backend.to_device(data.test_images), backend.to_device(data.test_labels)

    steps_per_epoch = math.ceil(len(train_labels) / cfg.batch_size)
    schedule = build_schedule(cfg, steps_per_epoch)
    runner.start(comm)

    def meta_for(epoch, batch, state):
        return dict(
            config=dataclasses.asdict(cfg),
            model_config=cfg.model_config(),
            num_classes=num_classes,
            backend=backend.name(),
            epoch=epoch,
            batch=batch,
            step=runner.steps,
            rng_state=state,
            history=history,
            best_accuracy=best,
            ranks=comm.size,
            **(extra_meta or {}),
        )

    last_path = out_dir / f"last{CHECKPOINT_EXT}"
    best_path = out_dir / f"best{CHECKPOINT_EXT}"
    summary = {}
    end_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, start_epoch + int(stop_after))
    for epoch in range(start_epoch, end_epoch):
        if rng_state is not None:
            rng.bit_generator.state = rng_state
        epoch_state = rng.bit_generator.state
        rng_state = None
        t0 = time.perf_counter()
        it = comm.shard(batches(train_images, train_labels, cfg.batch_size, rng, shuffle=True, augment=cfg.augment,
                                inputs=cfg.inputs))
        skip = start_batch if epoch == start_epoch else 0
        it = itertools.islice(it, skip, None)
        bar = _progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", progress, log)
        if bar is not None:
            bar.update(skip)
        loss_sum, correct, seen, done = 0.0, 0, 0, skip
        first_step, step_losses = runner.steps, []
        lr = schedule(max(runner.steps - 1, 0))
        with _StopAtBatchEnd() as stop:
            for x, y in it:
                lr = schedule(runner.steps)
                try:
                    loss, hits = train_step(runner, x, y, lr)
                except NonFiniteLoss as e:
                    raise TrainingError(
                        f"loss became {e.loss} at epoch {epoch + 1}, step {runner.steps + 1}; stopped, and "
                        f"the last good checkpoint ({last_path}) is kept"
                    ) from None
                step_losses.append(loss)
                done += 1
                loss_sum += loss * len(y)
                # Counted on the device: the loss is the step's one host synchronisation.
                correct = correct + hits
                seen += len(y)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.4g}")
                stop.requested = comm.any(stop.requested)  # Ctrl-C reaches ranks at different steps
                if stop.requested:
                    break
        if stop.requested:
            if bar is not None:
                bar.close()
            # Saved with the epoch's starting RNG state and the batches done: resume replays
            # the same shuffle and skips what was already trained.
            runner.settle()
            if comm.is_root:
                save_state(last_path, runner, meta_for(epoch, done, epoch_state))
                _write_losses(out_dir, first_step, step_losses)
            log(f"interrupted: saved {last_path} at epoch {epoch + 1}, batch {done}/{steps_per_epoch}")
            raise KeyboardInterrupt
        if bar is not None:
            bar.close()
        # One sync an epoch: the totals, and the labels the device found outside the classes.
        loss_sum, correct, seen, bad = comm.sums(loss_sum, int(correct), seen, runner.out_of_range_labels())
        if bad:
            raise TrainingError(
                f"{bad} training label(s) at epoch {epoch + 1} lie outside the model's classes (the GPU's "
                f"gather wraps them); stopped, and the last good checkpoint ({last_path}) is kept"
            )
        runner.settle()
        test_loss, test_acc, preds, probs = runner.evaluate(test_images, test_labels, cfg.eval_batch_size)
        seconds = time.perf_counter() - t0
        # The schedule is a function of the step, so the rates this epoch used are recomputed exactly.
        lrs = [schedule(s) for s in range(runner.steps - done, runner.steps)] or [lr]
        row = dict(
            epoch=epoch + 1,
            train_loss=loss_sum / max(seen, 1),
            train_accuracy=correct / max(seen, 1),
            test_loss=test_loss,
            test_accuracy=test_acc,
            seconds=seconds,
            lr=lr,
            lr_mean=statistics.fmean(lrs),
            lr_max=max(lrs),
        )
        history.append(row)
        log(
            f"epoch {epoch + 1}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4%}"
            f"  test loss {test_loss:.4f} acc {test_acc:.4%}  {seconds:.1f}s"
        )
        is_best = test_acc > best
        best = max(best, test_acc)
        state = rng.bit_generator.state
        if comm.is_root:  # the one writer; every rank holds the same state
            save_state(last_path, runner, meta_for(epoch + 1, 0, state))
            if is_best:
                save_state(best_path, runner, meta_for(epoch + 1, 0, state))
            _write_metrics(out_dir, history)
            _write_losses(out_dir, first_step, step_losses)
        summary = dict(
            test_accuracy=test_acc,
            best_test_accuracy=best,
            epochs=epoch + 1,
            seconds=sum(r["seconds"] for r in history),
            backend=backend.name(),
            config=dataclasses.asdict(cfg),
            model_config=cfg.model_config(),
            parameters=runner.parameters,
            **({"provenance": provenance} if provenance else {}),
        )
        if comm.is_root:
            _write_json(out_dir / "summary.json", summary)
        if plots and epoch + 1 == cfg.epochs and comm.is_root:
            _plots(out_dir, history, data, preds, num_classes, log)
    return summary


def _plots(out_dir, history, data, preds, num_classes, log):
    try:
        from xpnet.training import plots
    except ImportError as e:
        log(f"plots skipped: {e}")
        return
    plots.write_all(out_dir, history, data.test_images, data.test_labels, preds, num_classes)
