"""``xpnet train | evaluate | predict | bench``: the command-line tool.

Every failure the user can cause (bad flags, missing or broken data, a checkpoint that is not
ours, no GPU) ends in one line on stderr and a non-zero exit; argparse's usage errors exit 2,
everything else 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from xpnet import backend
from xpnet.errors import XpnetError
from xpnet.cli.argtypes import (OneLineParser, epoch_count, momentum, nonneg_float, nonneg_int, positive_float,
                                positive_int, probability, seed, width)


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
    from xpnet.training.config import PRESETS, TrainConfig

    d = dataclasses.replace(TrainConfig(), **PRESETS.get(preset, {}))
    fmt = _HelpFormatter
    parser = OneLineParser(prog="xpnet", description="ResNet-9 on MNIST in NumPy/CuPy.")
    parser.add_argument("--version", action="version", version=f"xpnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser._xpnet_train = _add_train(sub, d, preset, fmt)
    _add_evaluate(sub, d, fmt)
    _add_predict(sub, fmt)
    b = sub.add_parser("bench", help="throughput against the PyTorch twin", formatter_class=fmt, add_help=False)
    b.add_argument("args", nargs=argparse.REMAINDER)
    r = sub.add_parser("report", help="reproduce the report's tables beside PyTorch", add_help=False)
    r.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _add_train(sub, d, preset, fmt):
    """``xpnet train``'s flags, their defaults those of ``d`` (the preset's config); the choices
    are the models' and the optimizers' own (``xpnet.models.schema``, ``xpnet.optim``)."""
    from xpnet.models.schema import HEADS, RES_BLOCKS, SHORTCUTS
    from xpnet.training.config import ARCHS, FRAMEWORKS, INITS, INPUTS, OPTIMIZERS, POOL_TIES, PRESETS, SCHEDULES

    own = "the project's own recipe, shown below"
    recipes = "; ".join(f"{name}: " + (", ".join(f"{k} {v}" for k, v in values.items()) or own)
                        for name, values in PRESETS.items())
    t = sub.add_parser("train", help="train ResNet-9 and write metrics, checkpoints and plots", formatter_class=fmt,
                       description="Train ResNet-9, or with --arch report2 the second report's network. "
                       "The defaults shown are those of the chosen --preset.")
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
    t.add_argument("--epochs", type=epoch_count, default=d.epochs,
                   help="passes over the training set; a real such as 1.3 ends inside the last one")
    t.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="training batch size")
    t.add_argument("--lr", type=positive_float, default=d.lr, help="peak learning rate")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer, help="optimizer")
    t.add_argument("--momentum", type=momentum, default=d.momentum, help="SGD momentum (Nesterov)")
    t.add_argument("--weight-decay", type=nonneg_float, default=d.weight_decay,
                   help="L2 (sgd, adam) or decoupled (adamw) weight decay")
    t.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help="learning-rate schedule")
    t.add_argument("--label-smoothing", type=probability, default=d.label_smoothing, help="label smoothing of the loss")
    t.add_argument("--augment", type=nonneg_int, default=d.augment, help="random shifts of up to N pixels")
    t.add_argument("--crop", type=nonneg_int, default=d.crop,
                   help="train on random NxN windows of the images, evaluate on the central one (0: whole images)")
    t.add_argument("--arch", choices=ARCHS, default=d.arch,
                   help="network: resnet9 (the first report's) or report2 (the second report's narrow net, "
                   "no BatchNorm)")
    t.add_argument("--width", type=width, default=d.width, help="channel multiplier")
    t.add_argument("--shortcut", choices=SHORTCUTS, default=d.shortcut, help="residual skip path")
    t.add_argument("--res-blocks", type=int, choices=RES_BLOCKS, default=d.res_blocks, help="residual blocks")
    t.add_argument("--head", choices=HEADS, default=d.head, help="pooling before the classifier")
    t.add_argument("--dropout", type=probability, default=d.dropout, help="dropout before the linear layer")
    t.add_argument("--logit-scale", type=positive_float, default=d.logit_scale,
                   help="multiply the logits by this constant: the fast preset's 1/8 softens the softmax early on")
    t.add_argument("--pool-ties", choices=POOL_TIES, default=d.pool_ties,
                   help="report2's max-pool backward on tied maxima: first (as PyTorch) or share (every maximum)")
    t.add_argument("--init", choices=INITS, default=d.init,
                   help="report2's initial weights: report (normal x 0.01, biases 0) or pytorch "
                   "(uniform +-1/sqrt(fan_in))")
    t.add_argument("--inputs", choices=INPUTS, default=d.inputs,
                   help="pixels as the network sees them: standard (MNIST mean and std) or raw (0-255)")
    t.add_argument("--train-subset", type=nonneg_int, default=d.train_subset,
                   help="use the first N training images (0: all)")
    t.add_argument("--eval-batch-size", type=positive_int, default=d.eval_batch_size, help="test-set batch size")
    t.add_argument("--seed", type=seed, default=d.seed, help="seed of the one random generator")
    t.add_argument("--resume", type=Path, default=None, metavar="CHECKPOINT",
                   help="continue that run exactly, in its folder and on its data (a run folder: its "
                   "last.safetensors); flags that would change "
                   "its recipe are refused, and --epochs may change only a constant schedule's length")
    t.add_argument("--stop-after", type=positive_int, default=None, metavar="N",
                   help="stop after N epochs of this invocation (default: none; the schedule still spans --epochs)")
    t.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    t.add_argument("--sync-bn", action="store_true",
                   help="under mpiexec: BatchNorm statistics over the global batch, not each rank's slice")
    t.add_argument("--cuda-graph", action="store_true",
                   help="with --backend cupy: replay each train step (and evaluation) as one CUDA graph "
                   "(opt-in until confirmed on a GPU; losses are read every 50 steps)")
    return t


def _add_evaluate(sub, d, fmt):
    e = sub.add_parser("evaluate", help="test loss and accuracy of a checkpoint", formatter_class=fmt,
                       description="The test loss and accuracy of a checkpoint's model on the MNIST test set "
                       "(the t10k files of the data folder).")
    e.add_argument("--checkpoint", type=Path, required=True, help="a .safetensors file written by xpnet train")
    _add_data_dir(e, "; only the two t10k files are needed")
    _add_backend(e)
    e.add_argument("--batch-size", type=positive_int, default=d.eval_batch_size, help="batch size")
    e.add_argument("--json", action="store_true", help="print one JSON object")


def _add_predict(sub, fmt):
    p = sub.add_parser(
        "predict", help="read the digit in each image, or say there is none", formatter_class=fmt,
        description="Read the handwritten digit in each image (PNG, JPEG or any image Pillow reads, any size, "
        "dark ink on paper or light on dark, colour or transparent) with a checkpoint's model. Each image is "
        "prepared as MNIST's digits were: cropped to its ink, scaled into a 20x20 box and centred by its centre "
        "of mass in 28x28. An image with no digit (blank, noise, filled shapes, scattered marks, or one the "
        "model is unsure of) is answered 'no digit' with the reason.",
        epilog="exit status: 0 every image holds a digit; 3 every image was read and at least one holds no "
        "digit; 1 an image could not be read (one line each on stderr; the others are still answered) or the "
        "checkpoint is unusable; 2 a usage error.")
    p.add_argument("--checkpoint", type=Path, required=True, help="a .safetensors file written by xpnet train")
    _add_backend(p)
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files, any size")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per image: digit (true/false), prediction, probability, "
                   "the top three digits with their probabilities, and the reason when there is no digit")
    p.add_argument("--min-confidence", type=probability, default=0.5, metavar="P",
                   help="answer 'no digit' when the likeliest digit's probability is under P")
    p.add_argument("--save-preprocessed", type=Path, default=None, metavar="DIR",
                   help="write what the network saw, each image's 28x28 input, as DIR/NAME.png")


def _preset_of(argv) -> str:
    """The --preset a train command line names (so that --help shows that recipe's defaults)."""
    from xpnet.training.config import PRESETS

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


def main(argv=None) -> int:
    from xpnet.cli import deps

    argv = sys.argv[1:] if argv is None else argv
    from xpnet import allocator
    from xpnet.functional import parallel

    allocator.keep_freed_memory()  # a step's freed arrays serve the next step (xpnet.allocator)

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
        from xpnet.tools import bench

        return bench.main(argv[1:])
    if argv and argv[0] == "report":
        from xpnet.tools import report

        return report.main(argv[1:])
    preset = _preset_of(argv) if argv and argv[0] == "train" else "default"
    parser = build_parser(preset)
    args = parser.parse_args(argv)
    args.argv = list(argv)
    if args.command == "train":
        args.explicit = _explicit(argv, preset)
    absent = deps.missing(args.command, plots=not getattr(args, "no_plots", False))
    if absent:
        print(f"xpnet {args.command}: error: {deps.message(args.command, absent)}", file=sys.stderr)
        return 1
    from xpnet.cli.evaluate import cmd_evaluate
    from xpnet.cli.predict import cmd_predict
    from xpnet.cli.train import cmd_train

    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict}
    try:
        with backend.device_errors():
            return commands[args.command](args)
    except XpnetError as e:
        if getattr(e, "rank", 0) == 0:  # a DistributedError comes on every rank: one line
            print(f"xpnet {args.command}: error: {e}", file=sys.stderr)
        return 1
    except FileNotFoundError as e:
        print(f"xpnet {args.command}: error: {e.filename or e}: no such file", file=sys.stderr)
        return 1
    except OSError as e:
        # What the system refuses while writing results (a full disk, a read-only folder): one line
        # naming the path.
        where = f"{e.filename}: " if e.filename else ""
        print(f"xpnet {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"xpnet {args.command}: interrupted", file=sys.stderr)
        return 130

