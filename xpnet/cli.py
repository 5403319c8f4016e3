"""``xpnet train | evaluate | predict | bench``: the command-line tool.

Every failure the user can cause (bad flags, missing or broken data, a checkpoint that is not
ours, no GPU) ends in one line on stderr and a non-zero exit; argparse's usage errors exit 2,
everything else 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from xpnet import backend

class UserError(Exception):
    """An error to report as one line, without a traceback."""


def _positive_int(text):
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def _nonneg_int(text):
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return v


def _nonneg_float(text):
    v = float(text)
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text}")
    return v


def _positive_float(text):
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def _probability(text):
    v = float(text)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every flag's default, except where there is none to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False) or "%(default)" in text or action.default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def _add_backend(p):
    p.add_argument("--backend", choices=backend.BACKENDS, default="numpy", help="array backend")


def _add_data_dir(p):
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder with the four MNIST IDX files (default: $XPNET_DATA or ./data/mnist; "
        "missing files are downloaded)",
    )


def build_parser() -> argparse.ArgumentParser:
    from xpnet.train import OPTIMIZERS, PRESETS, SCHEDULES, TrainConfig

    d = TrainConfig()
    fmt = _HelpFormatter
    parser = argparse.ArgumentParser(prog="xpnet", description="ResNet-9 on MNIST in NumPy/CuPy.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train ResNet-9 and write metrics, checkpoints and plots", formatter_class=fmt)
    _add_data_dir(t)
    t.add_argument("--out", type=Path, default=Path("runs/latest"), help="output folder")
    t.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="a named recipe to start from; explicit flags override it")
    _add_backend(t)
    t.add_argument("--epochs", type=_positive_int, default=None, help=f"epochs (default {d.epochs}; with --resume, the stored total)")
    t.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help="training batch size")
    t.add_argument("--lr", type=_positive_float, default=d.lr, help="peak learning rate")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer, help="optimizer")
    t.add_argument("--momentum", type=_nonneg_float, default=d.momentum, help="SGD momentum (Nesterov)")
    t.add_argument("--weight-decay", type=_nonneg_float, default=d.weight_decay, help="L2 (sgd, adam) or decoupled (adamw) weight decay")
    t.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help="learning-rate schedule")
    t.add_argument("--label-smoothing", type=_probability, default=d.label_smoothing, help="label smoothing of the loss")
    t.add_argument("--augment", type=_nonneg_int, default=d.augment, help="random shifts of up to N pixels")
    t.add_argument("--width", type=_positive_float, default=d.width, help="channel multiplier")
    t.add_argument("--shortcut", choices=("identity", "conv"), default=d.shortcut, help="residual skip path")
    t.add_argument("--res-blocks", type=int, choices=(2, 3), default=d.res_blocks, help="residual blocks")
    t.add_argument("--head", choices=("max", "avg"), default=d.head, help="pooling before the classifier")
    t.add_argument("--dropout", type=_probability, default=d.dropout, help="dropout before the linear layer")
    t.add_argument("--train-subset", type=_nonneg_int, default=d.train_subset, help="use the first N training images (0: all)")
    t.add_argument("--eval-batch-size", type=_positive_int, default=d.eval_batch_size, help="test-set batch size")
    t.add_argument("--seed", type=int, default=d.seed, help="seed of the one random generator")
    t.add_argument("--resume", type=Path, default=None, metavar="CHECKPOINT", help="continue a run exactly")
    t.add_argument("--stop-after", type=_positive_int, default=None, metavar="N",
                   help="stop after N epochs of this invocation (the schedule still spans --epochs)")
    t.add_argument("--no-plots", action="store_true", help="skip the PNG figures")

    e = sub.add_parser("evaluate", help="test loss and accuracy of a checkpoint", formatter_class=fmt)
    e.add_argument("--checkpoint", type=Path, required=True, help="a .safetensors file written by xpnet train")
    _add_data_dir(e)
    _add_backend(e)
    e.add_argument("--batch-size", type=_positive_int, default=d.eval_batch_size, help="batch size")
    e.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("predict", help="classify PNG or JPEG digits", formatter_class=fmt)
    p.add_argument("--checkpoint", type=Path, required=True, help="a .safetensors file written by xpnet train")
    _add_backend(p)
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="PNG or JPEG files, any size")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")

    b = sub.add_parser("bench", help="throughput against the PyTorch twin", formatter_class=fmt, add_help=False)
    b.add_argument("args", nargs=argparse.REMAINDER)
    parser.set_defaults(train_parser=t)
    return parser


def _load_data(data_dir):
    from xpnet.data import default_data_dir, load_mnist

    return load_mnist(data_dir or default_data_dir(), download=True, progress=sys.stderr.isatty())


def cmd_train(args) -> int:
    from xpnet.train import TrainConfig, fit

    backend.use(args.backend)
    cfg = None
    if args.resume is None:
        cfg = TrainConfig(
            epochs=args.epochs or TrainConfig.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            optimizer=args.optimizer,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            schedule=args.schedule,
            label_smoothing=args.label_smoothing,
            augment=args.augment,
            width=args.width,
            shortcut=args.shortcut,
            res_blocks=args.res_blocks,
            head=args.head,
            dropout=args.dropout,
            train_subset=args.train_subset,
            seed=args.seed,
            eval_batch_size=args.eval_batch_size,
        )
    elif not args.resume.is_file():
        raise UserError(f"--resume: no such checkpoint: {args.resume}")
    data = _load_data(args.data_dir)
    if cfg is not None and cfg.train_subset > len(data.train_labels):
        raise UserError(f"--train-subset {cfg.train_subset} exceeds the {len(data.train_labels)} training images")
    print(f"data: {data}; backend: {backend.name()}; out: {args.out}", flush=True)
    try:
        summary = fit(
            cfg, data, args.out, resume=args.resume, epochs=args.epochs if args.resume else None,
            stop_after=args.stop_after, plots=not args.no_plots, log=lambda s: print(s, flush=True),
        )
    except KeyboardInterrupt:
        return 130
    if summary:
        print(
            f"done: test accuracy {summary['test_accuracy']:.4%} after {summary['epochs']} epochs "
            f"({summary['seconds']:.0f} s); results in {args.out}"
        )
    else:
        print(f"nothing to do: {args.resume} already covers every epoch (raise --epochs to go on)")
    return 0


def cmd_evaluate(args) -> int:
    from xpnet.train import evaluate, load_model

    backend.use(args.backend)
    model, _, meta = load_model(args.checkpoint)
    data = _load_data(args.data_dir)
    loss, acc, _, _ = evaluate(model, backend.to_device(data.test_images), backend.to_device(data.test_labels), args.batch_size)
    result = dict(test_loss=loss, test_accuracy=acc, test_images=int(len(data.test_labels)),
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
        raise UserError("predict needs Pillow: pip install 'xpnet[app]'") from e
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
    images = numpy.stack([load_image(p) for p in args.images])
    logits = backend.asnumpy(model(normalize(backend.to_device(images))))
    z = logits - logits.max(axis=1, keepdims=True)
    probs = numpy.exp(z) / numpy.exp(z).sum(axis=1, keepdims=True)
    for path, p in zip(args.images, probs):
        k = int(p.argmax())
        if args.json:
            print(json.dumps(dict(image=str(path), prediction=k, probability=float(p[k]))))
        else:
            print(f"{path}: {k} ({p[k]:.2%})")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from xpnet.functional import parallel

    try:
        parallel.threads()  # reads XPNET_THREADS: a bad value is a usage error, not a traceback
    except ValueError as e:
        print(f"xpnet: error: {e}", file=sys.stderr)
        return 2
    if argv and argv[0] == "bench":
        from xpnet import bench

        return bench.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train" and args.preset != "default" and args.resume is None:
        from xpnet.train import PRESETS

        # Re-parse with the preset as the defaults, so flags given explicitly still win.
        args.train_parser.set_defaults(**PRESETS[args.preset])
        args = parser.parse_args(argv)
    from xpnet.checkpoint import CheckpointError
    from xpnet.data import DataError
    from xpnet.train import TrainingError

    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict}
    try:
        return commands[args.command](args)
    except (UserError, DataError, CheckpointError, TrainingError, backend.BackendError) as e:
        print(f"xpnet {args.command}: error: {e}", file=sys.stderr)
        return 1
    except FileNotFoundError as e:
        print(f"xpnet {args.command}: error: {e.filename or e}: no such file", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
