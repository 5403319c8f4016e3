"""``xpnet train``: a new run, or the resume of one, from the parsed command line."""

from __future__ import annotations

import dataclasses
import math
import os
import sys

from xpnet import backend
from xpnet.errors import UserError
from xpnet.data.folder import DataFolder
from xpnet.errors import XpnetError


def _size(hw):
    return "x".join(str(d) for d in hw)


def _log(line):
    """A line of the run's log on stdout. A reader that went away (``xpnet train | head``) ends
    the log, not the run: the rest goes nowhere."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's exit flush then finds nothing to fail on
        os.close(devnull)


def _plural(n, word):
    from xpnet.training.config import epochs_text

    return f"{epochs_text(n)} {word}" if n == 1 else f"{epochs_text(n)} {word}s"


def _check_arch(cfg, given):
    """Refuse a flag of one network given for the other (``--head`` with ``--arch report2``)."""
    from xpnet.training.config import ARCH_ONLY

    for field, arch in ARCH_ONLY.items():
        if field in given and cfg.arch != arch:
            raise UserError(f"--{field.replace('_', '-')} applies to --arch {arch} only, not {cfg.arch}")
    if cfg.arch == "report2" and cfg.sync_bn:
        raise UserError("--sync-bn: --arch report2 has no BatchNorm")


def _read_checkpoint(path):
    from xpnet.training.runner import read_run

    if not path.exists() and not path.is_symlink():
        raise UserError(f"--resume: no such checkpoint: {path}")
    return read_run(path)


def _need_framework(framework):
    if framework == "torch":
        from xpnet.tools.machine import passive_omp_wait

        passive_omp_wait()  # before torch starts its OpenMP threads: spinning ones starve on a busy machine
        try:
            import xpnet.reference  # noqa: F401
        except ImportError as e:
            raise UserError(str(e)) from e


def cmd_train(args) -> int:
    from xpnet import distributed
    from xpnet.training.stops import Interrupted, StopRequests

    comm = distributed.world()  # one process, or one rank of `mpiexec -n N xpnet train`
    # SIGINT and SIGTERM from here on: at once while nothing needs saving, then at fit's next safe
    # point (see xpnet.training.stops).
    with StopRequests() as stops:
        try:
            with comm.guard("xpnet train", (XpnetError, FileNotFoundError)):
                return _train(args, comm, stops)
        except Interrupted as e:
            if e.message and comm.is_root:
                print(f"xpnet train: {e.message}", file=sys.stderr, flush=True)
            return e.exit_code


def _given(args) -> dict:
    """The config values the command line gives (a preset named on it gives its values)."""
    from xpnet.training.config import PRESETS, TrainConfig

    fields = [f.name for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)]
    named = set(PRESETS[args.preset]) if "preset" in args.explicit else set()
    return {k: getattr(args, k) for k in fields if k in args.explicit or k in named}


def _plan(args, comm):
    """-> (config, run folder, the checkpoint to resume or None, the data folder) for a
    new run or a resume; every refusal that needs no data comes here, before anything is read."""
    from xpnet.training import rundir
    from xpnet.training.config import TrainConfig

    if args.resume is not None and args.resume.is_dir():  # a run folder: continue from its last checkpoint
        if not (args.resume / "last.safetensors").is_file():
            raise UserError(f"--resume {args.resume}: a folder without a last.safetensors to resume")
        args.resume = args.resume / "last.safetensors"
    if args.resume is None:
        fields = [f.name for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)]
        cfg = TrainConfig(**{k: getattr(args, k) for k in fields}).check(flags=True)
        _check_arch(cfg, _given(args))
        _need_framework(cfg.framework)
        if cfg.sync_bn and comm.size == 1:
            print("xpnet train: warning: --sync-bn does nothing in one process; it is for mpiexec -n N xpnet train",
                  file=sys.stderr, flush=True)
        folder = _hold(comm, args.out, None, args.overwrite)
        return cfg, folder, None, DataFolder.choose(args.data_dir)
    # Read once (rank 0 reads and checks every field, the others are told) and handed to fit.
    resume = rundir.Resume.read(args.resume, comm, read=_read_checkpoint)
    problem = resume.conflicts(_given(args))
    if problem:
        raise UserError(problem)
    folder = _hold(comm, args.out or args.resume.parent, args.resume, args.overwrite)
    return resume.config(), folder, resume, DataFolder.choose(args.data_dir, resume.meta.get("data_dir"))


def _hold(comm, out, resume, overwrite):
    """The run folder, made (or, without ``out``, a fresh runs/run-N claimed) and locked by rank 0
    for the whole run, then checked for another run under the lock -> a RunFolder whose ``lock``
    rank 0 releases when the run ends."""
    from xpnet.training import rundir

    held = []

    def take():
        lock = rundir.claim(out)
        try:
            rundir.check_out(lock.folder, resume=resume, overwrite=overwrite)
        except BaseException:
            lock.release()
            raise
        held.append(lock)
        return lock.folder

    folder = rundir.RunFolder(comm.from_root(take))  # rank 0 holds the folder it alone writes into
    folder.lock = held[0] if held else None
    return folder


def _fit_data(cfg, resume, data, data_dir):
    """-> the config with the data's image size; a resumed run's must be the data's."""
    if resume is None:
        # The classifier follows the images' size (or the crop's); one the network cannot take is
        # refused here.
        return cfg.for_data(data.image_shape, flags=True).check(flags=True)
    if tuple(cfg.for_data(data.image_shape).image_size) != tuple(cfg.image_size):
        raise UserError(
            f"the run being resumed trained on {_size(cfg.image_size)} images, but {data_dir} holds "
            f"{_size(data.image_shape)} images"
        )
    return cfg


def _announce(cfg, data, data_dir, out, comm):
    n = len(data.train_labels)
    used = f"{cfg.train_subset} of {n}" if cfg.train_subset else f"{n}"
    h, w = data.image_shape
    ranks = f"; {comm.size} ranks" if comm.size > 1 else ""
    _log(f"data: {used} training and {len(data.test_labels)} test images ({h}x{w}) from {data_dir}; "
         f"backend: {backend.name()}{ranks}; out: {out}")
    if backend.name() == "numpy" and cfg.framework == "xpnet":
        from xpnet.tools.machine import blas_note

        note = blas_note()
        if note:
            _log(note)


def _compile_ahead(cfg, comm):
    """A helper process that compiles the CPU loops a ResNet-9 step calls while this one reads
    the data (only where Numba's cache lacks them: ``jit.compile_ahead``), or None. Under mpiexec
    none: the ranks of a host already keep its cores busy, each compiling alongside the others."""
    if backend.name() != "numpy" or cfg.framework != "xpnet" or cfg.arch != "resnet9" or comm.size > 1:
        return None
    from xpnet.functional import jit

    return jit.compile_ahead()


def _train(args, comm, stops) -> int:
    backend.use(args.backend)
    if args.cuda_graph and args.backend != "cupy":
        raise UserError("--cuda-graph replays the step on a GPU: it needs --backend cupy")
    if args.cuda_graph and comm.size > 1:
        raise UserError("--cuda-graph runs in one process for now, not under mpiexec")
    cfg, folder, resume, data_rule = _plan(args, comm)
    helper = None
    try:
        helper = _compile_ahead(cfg, comm)
        return _run(args, comm, stops, cfg, folder, resume, data_rule, helper)
    finally:
        if helper is not None:
            helper.stop()
        if folder.lock is not None:
            folder.lock.release()


def _run(args, comm, stops, cfg, folder, resume, data_rule, helper=None) -> int:
    """The run once its folder is held: the data, the checks that need it, then ``fit``."""
    from xpnet.training.loop import fit
    from xpnet.tools.provenance import provenance

    data_dir = data_rule
    if resume is not None:
        stops.keep(f"{resume.path} is kept")
    data = comm.root_first(data_dir.load, sys.stderr.isatty())
    cfg = _fit_data(cfg, resume, data, data_dir)
    from xpnet.tools import memory

    memory.check_batch(cfg, data, lambda line: print(f"xpnet train: warning: {line}", file=sys.stderr, flush=True))
    given, epochs = _given(args), None
    if resume is not None and "epochs" in given:
        epochs = given["epochs"]
        resume.check_epochs(epochs, math.ceil((cfg.train_subset or len(data.train_labels)) / cfg.batch_size))
    if comm.is_root:
        folder.claim(keep=args.resume, overwrite=args.overwrite)
        _announce(cfg, data, data_dir, folder, comm)
    summary = fit(
        None if resume else cfg, data, folder, resume=resume, epochs=epochs,
        stop_after=args.stop_after, plots=not args.no_plots, log=_log,
        extra_meta={"data_dir": str(data_dir.path.resolve())}, comm=comm,
        provenance=provenance(data_dir.path, getattr(args, "argv", None)) if comm.is_root else None,
        cuda_graph=args.cuda_graph, stops=stops, first_step=helper.stop if helper is not None else None,
    )
    if not comm.is_root:
        return 0
    if summary:
        _log(
            f"done: test accuracy {summary['test_accuracy']:.4%} after {_plural(summary['epochs'], 'epoch')} "
            f"({summary['seconds']:.0f} s); results in {folder}"
        )
    else:
        _log(f"nothing to do: {args.resume} already covers every epoch")
    return 0
