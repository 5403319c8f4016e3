"""``xpnet train | evaluate | predict | bench``: the command-line tool.

Every failure the user can cause (bad flags, missing or broken data, a checkpoint that is not
ours, no GPU) ends in one line on stderr and a non-zero exit; argparse's usage errors exit 2,
everything else 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

from xpnet import backend
from xpnet.argtypes import nonneg_float, nonneg_int, positive_float, positive_int, probability


class UserError(Exception):
    """An error to report as one line, without a traceback."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every flag's default, except where there is none to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        # `is`, not `in`: 0 and 0.0 compare equal to False, and their defaults are worth showing.
        if (action.default is None or action.default is False or "%(default)" in text
                or action.default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def _add_backend(p):
    p.add_argument("--backend", choices=backend.BACKENDS, default="numpy", help="array backend")


def _add_data_dir(p, extra=""):
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder with the MNIST IDX files (default: $XPNET_DATA, else ./data/mnist, which is "
        f"created and filled by a download; a named folder must exist){extra}",
    )


def build_parser(preset: str = "default") -> argparse.ArgumentParser:
    """The ``xpnet`` parser; ``train``'s defaults are those of the recipe ``preset``."""
    from xpnet import __version__
    from xpnet.train import FRAMEWORKS, OPTIMIZERS, PRESETS, SCHEDULES, TrainConfig

    d = dataclasses.replace(TrainConfig(), **PRESETS.get(preset, {}))
    fmt = _HelpFormatter
    parser = argparse.ArgumentParser(prog="xpnet", description="ResNet-9 on MNIST in NumPy/CuPy.")
    parser.add_argument("--version", action="version", version=f"xpnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    recipes = "; ".join(f"{name}: " + (", ".join(f"{k} {v}" for k, v in values.items()) or "the report's recipe")
                        for name, values in PRESETS.items())
    t = sub.add_parser("train", help="train ResNet-9 and write metrics, checkpoints and plots", formatter_class=fmt,
                       description="Train ResNet-9. The defaults shown are those of the chosen --preset.")
    _add_data_dir(t, "; with --resume, the run's own data folder")
    t.add_argument("--out", type=Path, default=None,
                   help="output folder (default: a new runs/run-N; with --resume, the checkpoint's folder); "
                   "a folder holding another run is refused")
    t.add_argument("--overwrite", action="store_true", help="let --out replace the run it holds")
    t.add_argument("--preset", choices=sorted(PRESETS), default=preset,
                   help=f"a named recipe to start from ({recipes}); explicit flags override it")
    _add_backend(t)
    t.add_argument("--framework", choices=FRAMEWORKS, default=d.framework,
                   help="xpnet, or its PyTorch twin under the same loop (needs the reference extra)")
    t.add_argument("--epochs", type=positive_int, default=d.epochs, help="epochs")
    t.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="training batch size")
    t.add_argument("--lr", type=positive_float, default=d.lr, help="peak learning rate")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer, help="optimizer")
    t.add_argument("--momentum", type=nonneg_float, default=d.momentum, help="SGD momentum (Nesterov)")
    t.add_argument("--weight-decay", type=nonneg_float, default=d.weight_decay, help="L2 (sgd, adam) or decoupled (adamw) weight decay")
    t.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help="learning-rate schedule")
    t.add_argument("--label-smoothing", type=probability, default=d.label_smoothing, help="label smoothing of the loss")
    t.add_argument("--augment", type=nonneg_int, default=d.augment, help="random shifts of up to N pixels")
    t.add_argument("--width", type=positive_float, default=d.width, help="channel multiplier")
    t.add_argument("--shortcut", choices=("identity", "conv"), default=d.shortcut, help="residual skip path")
    t.add_argument("--res-blocks", type=int, choices=(2, 3), default=d.res_blocks, help="residual blocks")
    t.add_argument("--head", choices=("max", "avg"), default=d.head, help="pooling before the classifier")
    t.add_argument("--dropout", type=probability, default=d.dropout, help="dropout before the linear layer")
    t.add_argument("--train-subset", type=nonneg_int, default=d.train_subset, help="use the first N training images (0: all)")
    t.add_argument("--eval-batch-size", type=positive_int, default=d.eval_batch_size, help="test-set batch size")
    t.add_argument("--seed", type=int, default=d.seed, help="seed of the one random generator")
    t.add_argument("--resume", type=Path, default=None, metavar="CHECKPOINT",
                   help="continue that run exactly, in its folder and on its data; flags that would change "
                   "its recipe are refused, and --epochs may change only a constant schedule's length")
    t.add_argument("--stop-after", type=positive_int, default=None, metavar="N",
                   help="stop after N epochs of this invocation (default: none; the schedule still spans --epochs)")
    t.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    t.add_argument("--sync-bn", action="store_true",
                   help="under mpiexec: BatchNorm statistics over the global batch, not each rank's slice")

    e = sub.add_parser("evaluate", help="test loss and accuracy of a checkpoint", formatter_class=fmt)
    e.add_argument("--checkpoint", type=Path, required=True, help="a .safetensors file written by xpnet train")
    _add_data_dir(e, "; only the two t10k files are needed")
    _add_backend(e)
    e.add_argument("--batch-size", type=positive_int, default=d.eval_batch_size, help="batch size")
    e.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("predict", help="classify PNG or JPEG digits", formatter_class=fmt)
    p.add_argument("--checkpoint", type=Path, required=True, help="a .safetensors file written by xpnet train")
    _add_backend(p)
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="PNG or JPEG files, any size")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")

    b = sub.add_parser("bench", help="throughput against the PyTorch twin", formatter_class=fmt, add_help=False)
    b.add_argument("args", nargs=argparse.REMAINDER)
    r = sub.add_parser("report", help="reproduce the report's tables beside PyTorch", add_help=False)
    r.add_argument("args", nargs=argparse.REMAINDER)
    parser._xpnet_train = t
    return parser


def _preset_of(argv) -> str:
    """The --preset a train command line names (so that --help shows that recipe's defaults)."""
    from xpnet.train import PRESETS

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="default")
    known, _ = pre.parse_known_args(argv[1:])
    # An unknown name is left for the real parser to report.
    return known.preset if known.preset in PRESETS else "default"


def _explicit(argv, preset) -> set:
    """The train options given on the command line (their dests), however spelt or abbreviated."""
    parser = build_parser(preset)
    for action in parser._xpnet_train._actions:
        if action.dest != "help":
            action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command"}


def _data_dir(flag, stored=None):
    """-> (folder, whether xpnet may create it for a download, what named it)."""
    from xpnet.data import default_data_dir

    if flag is not None:
        return Path(flag), False, "--data-dir"
    if stored:
        return Path(stored), False, "the run's data folder (stored in its checkpoint)"
    if os.environ.get("XPNET_DATA"):
        return Path(os.environ["XPNET_DATA"]), False, "$XPNET_DATA"
    return default_data_dir(), True, None


def _check_data_dir(folder, may_create, origin):
    # A typo in a named folder must not turn into a new folder and a download into it.
    if not may_create and not folder.is_dir():
        hint = "; pass --data-dir" if origin and origin.startswith("the run") else ""
        raise UserError(f"{origin} {folder}: no such folder{hint}")


def _load_data(folder, may_create, origin):
    from xpnet.data import load_mnist

    _check_data_dir(folder, may_create, origin)
    return load_mnist(folder, download=True, progress=sys.stderr.isatty())


def _plural(n, word):
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _check_batch(cfg, data, warn):
    """Refuse a batch larger than the training images used, or one whose step will not fit in
    memory; warn when it will take most of it."""
    from xpnet import memory

    n_total = len(data.train_labels)
    if cfg.train_subset > n_total:
        raise UserError(f"--train-subset {cfg.train_subset} exceeds the {n_total} training images")
    n = cfg.train_subset or n_total
    if cfg.batch_size > n:
        used = f"the {n} training images of --train-subset {cfg.train_subset}" if cfg.train_subset else f"the {n} training images"
        raise UserError(f"--batch-size {cfg.batch_size} exceeds {used}")
    if backend.name() != "numpy" or cfg.batch_size <= max(memory.PROBES):
        return
    need = memory.estimate_step_bytes(cfg.model_config(), 10, data.image_shape, cfg.batch_size)
    available = memory.available_bytes()
    ok, tight = memory.fits(need, available)
    gib = 2.0**30
    if not ok:
        raise UserError(
            f"--batch-size {cfg.batch_size} at width {cfg.width} needs about {need / gib:.1f} GiB for a "
            f"training step but {available / gib:.1f} GiB of memory is available; use a smaller batch"
        )
    if tight:
        warn(f"a training step at batch {cfg.batch_size} needs about {need / gib:.1f} GiB of the "
             f"{available / gib:.1f} GiB available")


def _one_line_errors():
    """The errors a user can cause, reported as one line without a traceback."""
    from xpnet.checkpoint import CheckpointError
    from xpnet.data import DataError
    from xpnet.distributed import DistributedError
    from xpnet.runs import RunError
    from xpnet.train import TrainingError

    return UserError, DataError, CheckpointError, TrainingError, RunError, backend.BackendError, DistributedError


def _read_checkpoint(path):
    from xpnet import checkpoint

    if not path.is_file():
        raise UserError(f"--resume: no such checkpoint: {path}")
    return checkpoint.load(path)


def _need_framework(framework):
    if framework == "torch":
        try:
            import xpnet.reference  # noqa: F401
        except ImportError as e:
            raise UserError(str(e)) from e


def cmd_train(args) -> int:
    from xpnet import distributed

    comm = distributed.world()  # one process, or one rank of `mpiexec -n N xpnet train`
    with comm.guard("xpnet train", (*_one_line_errors(), FileNotFoundError)):
        return _train(args, comm)


def _train(args, comm) -> int:
    from xpnet import checkpoint, runs
    from xpnet.train import PRESETS, TrainConfig, fit

    backend.use(args.backend)
    fields = [f.name for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)]
    # A preset named on the command line counts as giving its values.
    named = set(PRESETS[args.preset]) if "preset" in args.explicit else set()
    given = {k: getattr(args, k) for k in fields if k in args.explicit or k in named}
    meta = None
    if args.resume is None:
        cfg = TrainConfig(**{k: getattr(args, k) for k in fields})
        _need_framework(cfg.framework)
        out = args.out or runs.fresh_folder()
        runs.check_out(out, overwrite=args.overwrite)
        folder, may_create, origin = _data_dir(args.data_dir)
    else:
        _, meta = comm.from_root(_read_checkpoint, args.resume)  # rank 0 reads, the others are told
        if "config" not in meta or "step" not in meta:
            raise checkpoint.CheckpointError(f"{args.resume}: not an xpnet training checkpoint (no config)")
        problem = runs.conflicts(meta["config"], {k: v for k, v in given.items() if k != "epochs"})
        if problem:
            raise UserError(problem)
        cfg = TrainConfig.from_dict(meta["config"])
        out = args.out or args.resume.parent
        runs.check_out(out, resume=args.resume, overwrite=args.overwrite)
        folder, may_create, origin = _data_dir(args.data_dir, meta.get("data_dir"))
    out = comm.bcast(out)  # rank 0 names the folder it alone writes into
    data = comm.root_first(_load_data, folder, may_create, origin)
    _check_batch(cfg, data, lambda line: print(f"xpnet train: warning: {line}", file=sys.stderr, flush=True))
    epochs = None
    if meta is not None and "epochs" in given:
        epochs = given["epochs"]
        runs.check_new_epochs(meta, epochs, math.ceil((cfg.train_subset or len(data.train_labels)) / cfg.batch_size))
    if args.overwrite and comm.is_root:
        runs.clear(out, keep=args.resume)
    n = len(data.train_labels)
    used = f"{cfg.train_subset} of {n}" if cfg.train_subset else f"{n}"
    h, w = data.image_shape
    ranks = f"; {comm.size} ranks" if comm.size > 1 else ""
    if comm.is_root:
        print(f"data: {used} training and {len(data.test_labels)} test images ({h}x{w}) from {folder}; "
              f"backend: {backend.name()}{ranks}; out: {out}", flush=True)
        if backend.name() == "numpy" and cfg.framework == "xpnet":
            from xpnet.machine import blas_note

            note = blas_note()
            if note:
                print(note, flush=True)
    try:
        summary = fit(
            None if args.resume else cfg, data, out, resume=args.resume, epochs=epochs,
            stop_after=args.stop_after, plots=not args.no_plots, log=lambda s: print(s, flush=True),
            extra_meta={"data_dir": str(folder.resolve())}, comm=comm,
        )
    except KeyboardInterrupt:
        return 130
    if not comm.is_root:
        return 0
    if summary:
        print(
            f"done: test accuracy {summary['test_accuracy']:.4%} after {_plural(summary['epochs'], 'epoch')} "
            f"({summary['seconds']:.0f} s); results in {out}"
        )
    else:
        print(f"nothing to do: {args.resume} already covers every epoch")
    return 0


def cmd_evaluate(args) -> int:
    from xpnet.data import load_split
    from xpnet.train import evaluate, load_model

    backend.use(args.backend)
    model, _, meta = load_model(args.checkpoint)
    folder, may_create, origin = _data_dir(args.data_dir)
    _check_data_dir(folder, may_create, origin)
    images, labels = load_split(folder, "test", download=True, progress=sys.stderr.isatty())
    loss, acc, _, _ = evaluate(model, backend.to_device(images), backend.to_device(labels), args.batch_size)
    result = dict(test_loss=loss, test_accuracy=acc, test_images=int(len(labels)),
                  checkpoint=str(args.checkpoint), epoch=meta.get("epoch"))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"test loss {loss:.4f}  test accuracy {acc:.4%}  ({result['test_images']} images)")
    return 0


def load_image(path: Path):
    """A PNG or JPEG of any size -> (28, 28) uint8, white digit on black as in MNIST."""
    import numpy

    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:
        raise UserError("predict needs Pillow, a dependency of xpnet: pip install xpnet") from e
    try:
        with Image.open(path) as im:
            im = im.convert("L").resize((28, 28), Image.Resampling.LANCZOS)
            a = numpy.asarray(im, dtype=numpy.uint8)
    except FileNotFoundError as e:
        raise UserError(f"{path}: no such image") from e
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path}: not a readable PNG or JPEG image ({e})") from e
    # MNIST digits are light strokes on a dark ground; a scan or drawing is usually the reverse,
    # which its bright border gives away.
    border = numpy.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    if border.mean() > 127:
        a = 255 - a
    return a


def cmd_predict(args) -> int:
    import numpy

    from xpnet.data import normalize
    from xpnet.train import load_model

    backend.use(args.backend)
    model, _, _ = load_model(args.checkpoint)
    # Every readable image gets its answer; the unreadable ones are reported together after them.
    paths, images, problems = [], [], []
    for path in args.images:
        try:
            images.append(load_image(path))
            paths.append(path)
        except UserError as e:
            problems.append(str(e))
    if images:
        logits = backend.asnumpy(model(normalize(backend.to_device(numpy.stack(images)))))
        z = logits - logits.max(axis=1, keepdims=True)
        probs = numpy.exp(z) / numpy.exp(z).sum(axis=1, keepdims=True)
        for path, p in zip(paths, probs):
            k = int(p.argmax())
            if args.json:
                print(json.dumps(dict(image=str(path), prediction=k, probability=float(p[k]))))
            else:
                print(f"{path}: {k} ({p[k]:.2%})")
    if problems:
        raise UserError("; ".join(problems))
    return 0


def main(argv=None) -> int:
    from xpnet import deps

    argv = sys.argv[1:] if argv is None else argv
    from xpnet.functional import parallel

    try:
        parallel.threads()  # reads XPNET_THREADS: a bad value is a usage error, not a traceback
    except ValueError as e:
        print(f"xpnet: error: {e}", file=sys.stderr)
        return 2
    if argv and argv[0] == "bench":
        absent = deps.missing("bench")
        if absent and not {"-h", "--help"} & set(argv):
            print(f"xpnet bench: error: {deps.message('bench', absent)}", file=sys.stderr)
            return 1
        from xpnet import bench

        return bench.main(argv[1:])
    if argv and argv[0] == "report":
        from xpnet import report

        return report.main(argv[1:])
    preset = _preset_of(argv) if argv and argv[0] == "train" else "default"
    parser = build_parser(preset)
    args = parser.parse_args(argv)
    if args.command == "train":
        args.explicit = _explicit(argv, preset)
    absent = deps.missing(args.command, plots=not getattr(args, "no_plots", False))
    if absent:
        print(f"xpnet {args.command}: error: {deps.message(args.command, absent)}", file=sys.stderr)
        return 1
    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict}
    try:
        with backend.device_errors():
            return commands[args.command](args)
    except _one_line_errors() as e:
        if getattr(e, "rank", 0) == 0:  # a DistributedError comes on every rank: one line
            print(f"xpnet {args.command}: error: {e}", file=sys.stderr)
        return 1
    except FileNotFoundError as e:
        print(f"xpnet {args.command}: error: {e.filename or e}: no such file", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
