"""The training loop as a library function.

``fit(config, data, out_dir)`` trains a ResNet-9, evaluates it on the test set after every epoch
and writes ``metrics.csv``, ``summary.json``, the ``last``/``best`` checkpoints and the plots into
``out_dir``. Everything random comes from one host generator seeded by ``config.seed``: an
epoch's shuffle, shifts and crop corners, drawn when the epoch starts, and the dropout masks,
drawn during its steps. A checkpoint holds its state as of the start of the epoch in progress,
plus how many batches of that epoch were done and, inside an epoch (Ctrl-C), its state after the
last of them; ``resume`` redraws the epoch's order from the first, skips what was trained and
takes up the second, so it continues exactly where a run stopped, between epochs or in the
middle of one.

The loop's parts: ``_Run`` holds what a run needs (its config, runner, data, schedule, folder and
position); ``_Run.train_batches`` is an epoch's batch loop, ``_Run.end_epoch`` evaluates, writes
the epoch's row and saves; the duties around them are small objects: ``StopRequests`` (SIGINT
and SIGTERM, honoured at the next safe point: ``xpnet.training.stops``), ``_progress`` (a bar, or
a line every 30 s),
``RunFolder`` (the files).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import statistics
import sys
import time

import numpy

from xpnet import backend, distributed
from xpnet.data import batches, center_crop
from xpnet.training.config import TrainConfig, TrainingError
from xpnet.training.graphs import CHECK_EVERY
from xpnet.training.rundir import METRICS, Position, Resume, RunFolder
from xpnet.training.runner import NonFiniteLoss, build_runner, build_schedule, epoch_batches, total_steps, train_step
from xpnet.training.stops import StopRequests

__all__ = ["METRICS", "LineProgress", "StopRequests", "fit"]


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


def _progress(total, desc, enabled, log, done=0):
    """A tqdm bar where ``enabled`` (a terminal), else a line every 30 s through ``log``; either
    takes ``update``, ``set_postfix`` and ``close``."""
    bar = None
    if enabled:
        try:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
        except ImportError:
            pass
    if bar is None:
        bar = LineProgress(total, desc, log)
    bar.update(done)
    return bar


@dataclasses.dataclass
class _Totals:
    """An epoch's batches so far: summed loss, right predictions (a device count), images,
    batches done (with those skipped on resume), the step the epoch's losses start at, each
    step's loss, and the last learning rate."""

    loss_sum: float
    correct: object
    seen: int
    done: int
    first_step: int
    losses: list
    lr: float
    pending: list = dataclasses.field(default_factory=list)  # (index in losses, batch size) still on the device


class _Run:
    """What one ``fit`` call needs, and its parts: the batch loop and the end of an epoch."""

    def __init__(self, cfg, runner, data, folder, comm, rng, position, log, progress, extra_meta,
                 num_classes, stops):
        self.cfg, self.runner, self.data, self.folder, self.comm = cfg, runner, data, folder, comm
        self.stops = stops
        self.first_step = None  # fit's, called once after the first train step
        self.rng, self.position, self.log, self.progress = rng, position, log, progress
        self.extra_meta, self.num_classes = extra_meta or {}, num_classes
        images, labels = data.train_images, data.train_labels
        if cfg.train_subset:
            images, labels = images[: cfg.train_subset], labels[: cfg.train_subset]
        self.train = backend.to_device(images), backend.to_device(labels)
        # A cropped run is evaluated on the test images' central windows.
        self.test = backend.to_device(center_crop(data.test_images, cfg.crop)), backend.to_device(data.test_labels)
        self.steps_per_epoch = math.ceil(len(labels) / cfg.batch_size)
        self.schedule = build_schedule(cfg, self.steps_per_epoch)
        # A real number of epochs ends inside the last one: the epochs run are those begun.
        self.total = total_steps(cfg.epochs, self.steps_per_epoch)
        self.epochs = -(-self.total // self.steps_per_epoch)

    def meta(self, epoch, batch, rng_state, rng_state_now=None) -> dict:
        """A checkpoint's metadata: the run's recipe and where it stands (``rng_state_now``: the
        generator's state inside an epoch, after its ``batch`` batches)."""
        p = self.position
        now = {} if rng_state_now is None else dict(rng_state_now=rng_state_now)
        return dict(
            config=dataclasses.asdict(self.cfg), model_config=self.cfg.model_config(),
            num_classes=self.num_classes, backend=backend.name(), epoch=epoch, batch=batch,
            step=self.runner.steps, rng_state=rng_state, **now, history=p.history, best_accuracy=p.best,
            ranks=self.comm.size, **self.extra_meta,
        )

    def epoch(self, epoch):
        """One epoch from where the run stands -> (the epoch's row, test predictions (N,))."""
        p = self.position
        if p.rng_state is not None:
            self.rng.bit_generator.state = p.rng_state
        start_state, p.rng_state = self.rng.bit_generator.state, None
        skip = p.batch if epoch == p.epoch else 0
        now, p.rng_state_now = (p.rng_state_now if skip else None), None
        t0 = time.perf_counter()
        totals = self.train_batches(epoch, skip, now)
        if self.stops.requested:
            self.interrupted(epoch, totals, start_state)
        return self.end_epoch(epoch, totals, t0)

    def kept(self) -> str:
        """What holds the run should it stop now, as the end of a sentence."""
        if self.folder.last.exists():
            return f"the last good checkpoint ({self.folder.last}) is kept"
        return "no checkpoint was saved yet"

    def check_finite(self, epoch, when):
        """Stop, as a NaN loss does, when the run's state (weights, BatchNorm statistics,
        optimizer slots) holds NaN or infinity: saved, it would spoil the checkpoint."""
        for name, a in self.runner.state()[0].items():
            if a.dtype.kind == "f" and not bool(backend.get_array_module(a).isfinite(a).all()):
                raise TrainingError(
                    f"the run's state became non-finite ({name} holds NaN or infinity) {when} epoch "
                    f"{epoch + 1}; stopped, and {self.kept()}"
                )

    def train_batches(self, epoch, skip, rng_state_now=None) -> _Totals:
        """The epoch's batch loop, from batch ``skip`` on, until its end or a stop request;
        ``rng_state_now``: the generator's state after those ``skip`` batches (None: as it is
        once the epoch's order is drawn, exact only if no dropout drew)."""
        cfg, runner = self.cfg, self.runner
        it = self.comm.shard(batches(*self.train, cfg.batch_size, self.rng, shuffle=True, augment=cfg.augment,
                                     inputs=cfg.inputs, crop=cfg.crop))
        if rng_state_now is not None:
            # batches() drew the epoch's order above; what the skipped steps' dropout drew is in this.
            self.rng.bit_generator.state = rng_state_now
        todo = epoch_batches(self.total, self.steps_per_epoch, epoch)
        bar = _progress(todo, f"epoch {epoch + 1}/{self.epochs}", self.progress, self.log, done=skip)
        t = _Totals(0.0, 0, 0, skip, runner.steps, [], self.schedule(max(runner.steps - 1, 0)))
        for x, y in itertools.islice(it, skip, todo):
            t.lr = self.schedule(runner.steps)
            try:
                loss, hits = train_step(runner, x, y, t.lr)
            except NonFiniteLoss as e:
                raise TrainingError(
                    f"loss became {e.loss} at epoch {epoch + 1}, step {runner.steps + 1}; stopped, and "
                    f"{self.kept()}"
                ) from None
            if self.first_step is not None:
                self.first_step, done = None, self.first_step
                done()
            t.losses.append(loss)
            t.done += 1
            # Counted on the device: the loss is the step's one host synchronisation.
            t.correct = t.correct + hits
            t.seen += len(y)
            bar.update(1)
            if isinstance(loss, float):
                t.loss_sum += loss * len(y)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{t.lr:.4g}")
            else:  # a replayed CUDA graph's: read (and checked) every CHECK_EVERY steps
                t.pending.append((len(t.losses) - 1, len(y)))
                if len(t.pending) >= CHECK_EVERY:
                    self.read_losses(epoch, t, bar)
            if self.stops.agree(self.comm):  # a signal reaches ranks at different steps
                break
        self.read_losses(epoch, t, bar)
        bar.close()
        return t

    def read_losses(self, epoch, t: _Totals, bar):
        """The losses a CUDA-graph run left on the device, read in one host sync and checked.
        Unlike the eager check, this comes after those steps' updates: the weights may be spoilt,
        but no checkpoint was written since, so the last good one stays."""
        if not t.pending:
            return
        xp = backend.xp()
        values = backend.asnumpy(xp.concatenate([t.losses[i] for i, _ in t.pending]))
        for (i, n), v in zip(t.pending, values.tolist()):
            if not math.isfinite(v):
                raise TrainingError(
                    f"loss became {v} at epoch {epoch + 1}, step {t.first_step + i + 1}; stopped, and "
                    f"{self.kept()}"
                )
            t.losses[i] = v
            t.loss_sum += v * n
        t.pending.clear()
        bar.set_postfix(loss=f"{t.losses[-1]:.4f}", lr=f"{t.lr:.4g}")

    def interrupted(self, epoch, t: _Totals, start_state):
        """Save with the epoch's starting generator state, the batches done and the generator's
        state now (a resume replays the same shuffle, skips what was trained and draws the next
        dropout masks where this run would have), then end the run."""
        self.runner.settle()
        self.check_finite(epoch, "in")
        if self.comm.is_root:
            now = self.rng.bit_generator.state if t.done else None
            self.folder.save(self.runner, self.meta(epoch, t.done, start_state, now))
            self.folder.write_losses(t.first_step, t.losses)
        self.stops.keep(f"{self.folder.last} (epoch {epoch + 1}, batch {t.done}) is kept")
        todo = epoch_batches(self.total, self.steps_per_epoch, epoch)
        self.log(f"interrupted: saved {self.folder.last} at epoch {epoch + 1}, batch {t.done}/{todo}")
        raise self.stops.interrupted()

    def end_epoch(self, epoch, t: _Totals, t0):
        """Evaluate, write the epoch's row, save the checkpoints -> (row, test predictions)."""
        runner, comm = self.runner, self.comm
        # One sync an epoch: the totals, and the labels the device found outside the classes.
        loss_sum, correct, seen, bad = comm.sums(t.loss_sum, int(t.correct), t.seen, runner.out_of_range_labels())
        if bad:
            raise TrainingError(
                f"{bad} training label(s) at epoch {epoch + 1} lie outside the model's classes (the GPU's "
                f"gather wraps them); stopped, and {self.kept()}"
            )
        runner.settle()
        self.check_finite(epoch, "at the end of")
        test_loss, test_acc, preds, _ = runner.evaluate(*self.test, self.cfg.eval_batch_size)
        # The schedule is a function of the step, so the rates this epoch used are recomputed exactly.
        lrs = [self.schedule(s) for s in range(runner.steps - t.done, runner.steps)] or [t.lr]
        row = dict(epoch=epoch + 1, train_loss=loss_sum / max(seen, 1), train_accuracy=correct / max(seen, 1),
                   test_loss=test_loss, test_accuracy=test_acc, seconds=time.perf_counter() - t0, lr=t.lr,
                   lr_mean=statistics.fmean(lrs), lr_max=max(lrs))
        p = self.position
        p.history.append(row)
        self.log(
            f"epoch {epoch + 1}/{self.epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4%}"
            f"  test loss {test_loss:.4f} acc {test_acc:.4%}  {row['seconds']:.1f}s"
        )
        is_best, p.best = test_acc > p.best, max(p.best, test_acc)
        if comm.is_root:  # the one writer; every rank holds the same state
            self.folder.save(runner, self.meta(epoch + 1, 0, self.rng.bit_generator.state), best=is_best)
            self.folder.write_metrics(p.history)
            self.folder.write_losses(t.first_step, t.losses)
        self.stops.keep(f"{self.folder.last} (epoch {epoch + 1}) is kept")
        return row, preds

    def summary(self, row, provenance) -> dict:
        """summary.json: ``epochs`` is the epochs trained, the config's own number at the end
        (1.3, where the metrics' last row is epoch 2)."""
        history = self.position.history
        done = self.cfg.epochs if row["epoch"] == self.epochs else row["epoch"]
        return dict(
            test_accuracy=row["test_accuracy"], best_test_accuracy=self.position.best, epochs=done,
            seconds=sum(r["seconds"] for r in history), backend=backend.name(),
            config=dataclasses.asdict(self.cfg), model_config=self.cfg.model_config(),
            parameters=self.runner.parameters, **({"provenance": provenance} if provenance else {}),
        )


def _start(cfg, resume, epochs, num_classes, rng, image_shape):
    """-> (config, runner, position) of a new run, or of the run ``resume`` continues."""
    if resume is None:
        if epochs is not None:
            cfg = dataclasses.replace(cfg, epochs=epochs)
        # The classifier follows the images' size (or the crop's).
        cfg = cfg.for_data(image_shape)
        return cfg, build_runner(cfg, num_classes, rng), Position()
    cfg = resume.config(epochs)
    if tuple(cfg.for_data(image_shape).image_size) != tuple(cfg.image_size):
        raise TrainingError(f"{resume.path}: the run trained on {cfg.image_size} images, the data holds {image_shape}")
    # Built from our generator, so dropout draws from it; its state is restored by the epoch.
    runner = build_runner(cfg, int(resume.meta["num_classes"]), rng)
    resume.restore(runner)
    return cfg, runner, resume.position()


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
    cuda_graph=False,
    stops=None,
    first_step=None,
) -> dict:
    """Train on ``data`` (an ``xpnet.data.MNIST``) and write results into ``out_dir`` (a path or a
    ``RunFolder``).

    resume: a checkpoint written by an earlier ``fit`` (its path, or a ``Resume`` already read);
    the run continues with the config stored there (``cfg`` is ignored), except that ``epochs``
    may set a new total. ``stop_after`` ends this call after that many epochs while the schedule
    still spans the whole run, so "stop after 1, resume" equals one uninterrupted run. Returns the
    summary dict (also in summary.json; {} when there was nothing to do). ``extra_meta``: more
    JSON-able entries for every checkpoint's metadata (the CLI stores the data folder there).
    ``provenance``: what produced the run (see ``xpnet.tools.provenance``), kept in
    summary.json. Raises TrainingError on a non-finite loss; the last good checkpoint stays.

    comm: the data-parallel communicator (``xpnet.distributed``; default: one process). Every
    rank calls ``fit`` alike; rank 0 alone reads checkpoints, writes files and logs.

    cuda_graph: replay the train step and evaluation as CUDA graphs (CuPy, one process;
    ``xpnet.training.graphs``); the losses are then read every ``CHECK_EVERY`` steps.

    stops: the run's ``StopRequests`` (the command line's, installed before it loads the data);
    without one ``fit`` installs its own. SIGINT or SIGTERM ends the run at the next safe point
    with a checkpoint and one line saying which, raising ``stops.Interrupted`` (a
    KeyboardInterrupt). A run whose loss or state becomes non-finite raises TrainingError.

    first_step: called once after the first train step (the command line stops the process
    that compiled the CPU loops ahead there: ``jit.compile_ahead``).
    """
    with contextlib.ExitStack() as stack:
        if stops is None:
            stops = stack.enter_context(StopRequests())
        # A diverging run overflows in many kernels at once; the loss and state checks stop it
        # with one line, which NumPy's warnings would only bury.
        stack.enter_context(numpy.errstate(over="ignore", invalid="ignore", divide="ignore"))
        return _fit(cfg, data, out_dir, resume, epochs, stop_after, progress, log, plots, extra_meta, comm,
                    provenance, cuda_graph, stops, first_step)


def _fit(cfg, data, out_dir, resume, epochs, stop_after, progress, log, plots, extra_meta, comm, provenance,
         cuda_graph, stops, first_step=None) -> dict:
    comm = distributed.Solo() if comm is None else comm
    folder = out_dir if isinstance(out_dir, RunFolder) else RunFolder(out_dir)
    if comm.is_root:
        folder.path.mkdir(parents=True, exist_ok=True)
    else:
        log, progress = (lambda s: None), False
    progress = sys.stderr.isatty() if progress is None else progress
    num_classes = max(int(max(data.train_labels.max(), data.test_labels.max())) + 1, 10)
    if resume is not None and not isinstance(resume, Resume):
        resume = Resume.read(resume, comm)
    rng = numpy.random.default_rng(None if cfg is None else cfg.seed)
    cfg, runner, position = _start(cfg, resume, epochs, num_classes, rng, data.image_shape)
    run = _Run(cfg, runner, data, folder, comm, rng, position, log, progress, extra_meta, num_classes, stops)
    run.first_step = first_step
    runner.start(comm)
    if not stops.armed:
        stops.arm(f"{resume.path} is kept" if resume is not None else "no checkpoint was saved yet")
    if cuda_graph:
        if not hasattr(runner, "use_cuda_graph"):
            raise TrainingError("--cuda-graph replays xpnet's own step (--framework xpnet)")
        runner.use_cuda_graph()
    summary = {}
    end_epoch = run.epochs if stop_after is None else min(run.epochs, position.epoch + int(stop_after))
    for epoch in range(position.epoch, end_epoch):
        row, preds = run.epoch(epoch)
        summary = run.summary(row, provenance)
        if comm.is_root:
            folder.write_summary(summary)
        if plots and epoch + 1 == run.epochs and comm.is_root:
            _plots(folder.path, position.history, data, preds, num_classes, log, run.steps_per_epoch)
        # A signal during the evaluation, the saves or the figures: the epoch is whole and saved.
        if stops.agree(comm):
            log(f"interrupted: saved {folder.last} at the end of epoch {epoch + 1}")
            raise stops.interrupted()
    return summary


def _plots(out_dir, history, data, preds, num_classes, log, steps_per_epoch=None):
    try:
        from xpnet.training import plots
    except ImportError as e:
        log(f"plots skipped: {e}")
        return
    plots.write_all(out_dir, history, data.test_images, data.test_labels, preds, num_classes, steps_per_epoch)
