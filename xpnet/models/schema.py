"""The model config, checked before a model is built: every key known, every value of its type and
within bounds, and the image size one the network can take.

A checkpoint stores the config its model was built from, and ``evaluate``, ``predict`` and
``--resume`` build a model from it. A file from elsewhere can say anything there: ``width: 16``
asks for gigabytes, ``num_classes: 1e12`` for more than any machine holds, an unknown key would
reach the constructor. So the stored config passes through ``check`` first, and the constructor
itself checks the values it is given (a flag such as ``--width 100`` meets the same bounds).

    config = check(meta["model_config"], meta["num_classes"])   # ModelConfigError, one line

``arch`` picks the network: "resnet9" (the first report's, the default, also for configs stored
before the key existed) or "report2" (the second report's, ``Report2Net``); ``check`` returns the
keyword arguments of that network's constructor, ``arch`` not among them.

The bounds are generous for this network on 28x28 digits (four times the default width, at most
1024 channels a layer, images up to 1024x1024) and small enough that no config can ask for more
than about a gigabyte of weights.
"""

from __future__ import annotations

import math
import numbers

from xpnet.errors import XpnetError


ARCHS = ("resnet9", "report2")
SHORTCUTS = ("identity", "conv")
HEADS = ("max", "avg")
RES_BLOCKS = (2, 3)
CHANNELS = (64, 128, 256, 256)

MAX_WIDTH = 4.0
MAX_CHANNELS = 1024
MAX_IN_CHANNELS = 16
MAX_CLASSES = 1000
MAX_IMAGE_SIDE = 1024
MAX_LOGIT_SCALE = 100.0
# Three 2x2 max-pools lie between the input and the head (res_blocks 2 or 3 alike); the "max"
# head pools once more. Each pool halves a side, rounding down, and a side may not reach 0.
POOLS_BEFORE_HEAD = 3

DEFAULTS = dict(
    in_channels=1,
    width=1.0,
    shortcut="identity",
    res_blocks=2,
    head="max",
    dropout=0.0,
    logit_scale=1.0,
    channels=list(CHANNELS),
    image_size=[28, 28],
)


# The second report's network (``Report2Net``): channel counts and tie rule, no BatchNorm.
REPORT2_DEFAULTS = dict(
    in_channels=1,
    width=1.0,
    dropout=0.9,
    ties="first",
    init="report",
    channels=[4, 16, 32, 64],
    image_size=[28, 28],
)
MAXPOOL_TIES = ("first", "share")
REPORT2_INITS = ("report", "pytorch")
REPORT2_POOLS = 2
MAX_LINEAR_WEIGHTS = 2**26


class ModelConfigError(XpnetError, ValueError):
    """A model config xpnet will not build (one line naming the field)."""


def _int(value, name, low, high):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ModelConfigError(f"{name} must be an integer, got {value!r:.60}")
    if not low <= value <= high:
        raise ModelConfigError(f"{name} must be in {low}..{high}, got {value}")
    return int(value)


def _number(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ModelConfigError(f"{name} must be a number, got {value!r:.60}")
    value = float(value)
    if not math.isfinite(value):
        raise ModelConfigError(f"{name} must be finite, got {value}")
    return value


def _choice(value, name, choices):
    if not isinstance(value, str) or value not in choices:
        raise ModelConfigError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r:.60}")
    return value


def _ints(value, name, n, low, high):
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise ModelConfigError(f"{name} must be a list of {n} integers, got {value!r:.60}")
    return [_int(v, f"{name}[{i}]", low, high) for i, v in enumerate(value)]


def min_image_side(head: str) -> int:
    """The smallest image side the network takes with ``head``."""
    return 2 ** (POOLS_BEFORE_HEAD + (head == "max"))


def head_features(channels: int, image_size, head: str) -> int:
    """Inputs of the classifier's linear layer: ``channels`` times the pixels the head leaves."""
    if head == "avg":
        return channels
    h, w = (side >> (POOLS_BEFORE_HEAD + 1) for side in image_size)
    return channels * h * w


def arch(config, prefix: str = "model_config") -> str:
    """The network ``config`` names ("resnet9" where it names none)."""
    if not isinstance(config, dict):
        raise ModelConfigError(f"{prefix} must be a JSON object, got {type(config).__name__}")
    return _choice(config.get("arch", "resnet9"), f"{prefix}.arch", ARCHS)


def _known(config, defaults, prefix):
    unknown = sorted(str(k) for k in config if k not in defaults and k != "arch")
    if unknown:
        raise ModelConfigError(
            f"{prefix} has unknown key(s) {', '.join(unknown)[:200]}; known: arch, {', '.join(defaults)}"
        )
    return {**defaults, **{k: v for k, v in config.items() if k != "arch"}}


def check(config, num_classes=None, prefix: str = "model_config") -> dict:
    """``config`` (``arch`` and the keyword arguments of that network) -> the keyword arguments,
    defaults filled in, each value checked; ``num_classes`` too when given. Raises
    ModelConfigError naming the first bad field.
    """
    if arch(config, prefix) == "report2":
        return _check_report2(config, num_classes, prefix)
    c = _known(config, DEFAULTS, prefix)
    out = dict(
        in_channels=_int(c["in_channels"], f"{prefix}.in_channels", 1, MAX_IN_CHANNELS),
        width=_number(c["width"], f"{prefix}.width"),
        shortcut=_choice(c["shortcut"], f"{prefix}.shortcut", SHORTCUTS),
        res_blocks=_choice_int(c["res_blocks"], f"{prefix}.res_blocks"),
        head=_choice(c["head"], f"{prefix}.head", HEADS),
        dropout=_number(c["dropout"], f"{prefix}.dropout"),
        logit_scale=_number(c["logit_scale"], f"{prefix}.logit_scale"),
        channels=_ints(c["channels"], f"{prefix}.channels", 4, 1, MAX_CHANNELS),
        image_size=_ints(c["image_size"], f"{prefix}.image_size", 2, 1, MAX_IMAGE_SIDE),
    )
    _check_width(out, prefix)
    if not 0.0 < out["logit_scale"] <= MAX_LOGIT_SCALE:
        raise ModelConfigError(
            f"{prefix}.logit_scale must be in (0, {MAX_LOGIT_SCALE:g}], got {out['logit_scale']:g}"
        )
    side = min_image_side(out["head"])
    h, w = out["image_size"]
    if min(h, w) < side:
        other = " (--head avg takes 8x8 and up)" if out["head"] == "max" and min(h, w) >= 8 else ""
        raise ModelConfigError(
            f"images of {h}x{w} pixels are too small for this network: its {POOLS_BEFORE_HEAD} "
            f"pools{' and max head' if out['head'] == 'max' else ''} need at least {side}x{side}{other}"
        )
    if num_classes is not None:
        _int(num_classes, "num_classes", 1, MAX_CLASSES)
    return out


def _check_width(out, prefix):
    """Width, dropout and the channel counts they give, as both networks take them."""
    if not 0.0 < out["width"] <= MAX_WIDTH:
        raise ModelConfigError(f"{prefix}.width must be in (0, {MAX_WIDTH:g}], got {out['width']:g}")
    if not 0.0 <= out["dropout"] < 1.0:
        raise ModelConfigError(f"{prefix}.dropout must be in [0, 1), got {out['dropout']:g}")
    widest = max(round(ch * out["width"]) for ch in out["channels"])
    if widest > MAX_CHANNELS:
        raise ModelConfigError(
            f"{prefix}: width {out['width']:g} times channels {out['channels']} gives {widest} "
            f"channels, more than {MAX_CHANNELS}"
        )


def _check_report2(config, num_classes, prefix) -> dict:
    c = _known(config, REPORT2_DEFAULTS, prefix)
    out = dict(
        in_channels=_int(c["in_channels"], f"{prefix}.in_channels", 1, MAX_IN_CHANNELS),
        width=_number(c["width"], f"{prefix}.width"),
        dropout=_number(c["dropout"], f"{prefix}.dropout"),
        ties=_choice(c["ties"], f"{prefix}.ties", MAXPOOL_TIES),
        init=_choice(c["init"], f"{prefix}.init", REPORT2_INITS),
        channels=_ints(c["channels"], f"{prefix}.channels", 4, 1, MAX_CHANNELS),
        image_size=_ints(c["image_size"], f"{prefix}.image_size", 2, 1, MAX_IMAGE_SIDE),
    )
    _check_width(out, prefix)
    side = 2**REPORT2_POOLS
    h, w = out["image_size"]
    if min(h, w) < side:
        raise ModelConfigError(
            f"images of {h}x{w} pixels are too small for this network: its {REPORT2_POOLS} pools need "
            f"at least {side}x{side}"
        )
    if num_classes is not None:
        _int(num_classes, "num_classes", 1, MAX_CLASSES)
    # Its linear layer takes every value the two pools leave, so big images make it big.
    classes = MAX_CLASSES if num_classes is None else num_classes
    weights = max(1, round(out["channels"][3] * out["width"])) * (h // side) * (w // side) * classes
    if weights > MAX_LINEAR_WEIGHTS:
        raise ModelConfigError(
            f"{prefix}: {h}x{w} images and {out['channels'][3]} channels give the linear layer {weights} weights, "
            f"more than {MAX_LINEAR_WEIGHTS}"
        )
    return out


def _choice_int(value, name):
    v = _int(value, name, min(RES_BLOCKS), max(RES_BLOCKS))
    if v not in RES_BLOCKS:
        raise ModelConfigError(f"{name} must be one of {', '.join(map(str, RES_BLOCKS))}, got {v}")
    return v
