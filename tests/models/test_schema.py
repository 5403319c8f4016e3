"""The model config's schema: every field of a stored config checked (type, bounds, unknown keys)
before a model is built, in one line naming the field."""

import importlib
import inspect
import math

import pytest

from xpnet.models import Report2Net, ResNet9
from xpnet.models.schema import (
    DEFAULTS,
    REPORT2_DEFAULTS,
    ModelConfigError,
    arch,
    check,
    head_features,
    min_image_side,
)


def test_defaults_pass_and_are_filled_in():
    assert check({}, 10) == {**DEFAULTS}
    assert check(dict(width=0.25, head="avg"))["width"] == 0.25


@pytest.mark.parametrize(
    ("config", "num_classes", "field"),
    [
        (dict(width=16), 10, "width"),
        (dict(width=math.inf), 10, "width must be finite"),
        (dict(width=math.nan), 10, "width must be finite"),
        (dict(width=0), 10, "width"),
        (dict(width=-1), 10, "width"),
        (dict(width="1"), 10, "width must be a number"),
        (dict(width=True), 10, "width must be a number"),
        (dict(dropout=5), 10, "dropout"),
        (dict(dropout=1.0), 10, "dropout"),
        (dict(logit_scale=0), 10, "logit_scale"),
        (dict(logit_scale=-0.125), 10, "logit_scale"),
        (dict(logit_scale=1e3), 10, "logit_scale"),
        (dict(logit_scale=math.nan), 10, "logit_scale must be finite"),
        (dict(logit_scale="0.1"), 10, "logit_scale must be a number"),
        (dict(shortcut="evil"), 10, "shortcut"),
        (dict(shortcut=["identity"]), 10, "shortcut"),
        (dict(res_blocks=4), 10, "res_blocks"),
        (dict(res_blocks=2.0), 10, "res_blocks must be an integer"),
        (dict(head=None), 10, "head"),
        (dict(channels=[64, 128, 256]), 10, "channels"),
        (dict(channels=[64, 128, 256, 10**9]), 10, r"channels\[3\]"),
        (dict(channels=[64, 128, 256, 0]), 10, r"channels\[3\]"),
        (dict(channels="64,128"), 10, "channels"),
        (dict(width=4, channels=[512, 512, 512, 512]), 10, "more than 1024"),
        (dict(in_channels=0), 10, "in_channels"),
        (dict(in_channels=10**6), 10, "in_channels"),
        (dict(image_size=[28]), 10, "image_size"),
        (dict(image_size=[10**6, 28]), 10, "image_size"),
        (dict(image_size=[8, 8]), 10, "too small"),
        (dict(evil=1), 10, "unknown key"),
        (dict(num_classes=10), 10, "unknown key"),
        ({}, 10**12, "num_classes"),
        ({}, "ten", "num_classes must be an integer"),
        ({}, 0, "num_classes"),
        ({}, 1.5, "num_classes must be an integer"),
    ],
)
def test_bad_fields_are_one_line_naming_the_field(config, num_classes, field):
    with pytest.raises(ModelConfigError, match=field) as e:
        check(config, num_classes)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("config", [[], "evil", 5, None])
def test_a_config_that_is_not_an_object_is_refused(config):
    with pytest.raises(ModelConfigError, match="JSON object"):
        check(config)


def test_from_config_builds_nothing_when_the_config_is_bad():
    with pytest.raises(ModelConfigError, match="unknown key"):
        ResNet9.from_config(dict(width=0.125, rng=3), 10)
    net = ResNet9.from_config(dict(width=0.125, image_size=[32, 32]), 10, rng=0)
    assert net.classifier[-1].weight.data.shape == (10, head_features(32, [32, 32], "max"))


def test_smallest_sides():
    assert min_image_side("max") == 16 and min_image_side("avg") == 8
    assert head_features(8, (28, 28), "max") == 8 and head_features(8, (32, 33), "max") == 32


def test_arch_picks_the_network_and_its_fields():
    assert arch({}) == "resnet9" and arch(dict(arch="resnet9")) == "resnet9"
    assert check(dict(arch="resnet9"), 10) == {**DEFAULTS}
    assert check(dict(arch="report2"), 10) == {**REPORT2_DEFAULTS}
    assert check(dict(arch="report2", ties="share", dropout=0.99))["ties"] == "share"
    net = Report2Net.from_config(dict(arch="report2", dropout=0.5, image_size=[32, 32]), 10, rng=0)
    assert net.classifier[-1].weight.data.shape == (10, 64 * 8 * 8)


@pytest.mark.parametrize(
    ("config", "num_classes", "field"),
    [
        (dict(arch="resnet10"), 10, "arch must be one of resnet9, report2"),
        (dict(arch=["report2"]), 10, "arch"),
        (dict(arch="report2", head="avg"), 10, "unknown key"),
        (dict(arch="report2", width=8), 10, "width"),
        (dict(arch="resnet9", ties="share"), 10, "unknown key"),
        (dict(arch="report2", ties="random"), 10, "ties"),
        (dict(arch="report2", init="zeros"), 10, "init"),
        (dict(arch="report2", dropout=1.0), 10, "dropout"),
        (dict(arch="report2", channels=[4, 16, 32]), 10, "channels"),
        (dict(arch="report2", image_size=[3, 28]), 10, "too small"),
        (dict(arch="report2", image_size=[1024, 1024], channels=[4, 16, 32, 1024]), 10, "linear layer"),
        (dict(arch="report2", image_size=[1024, 1024], width=4), 10, "linear layer"),
        (dict(arch="report2"), 10**6, "num_classes"),
    ],
)
def test_bad_report2_fields_are_one_line_naming_the_field(config, num_classes, field):
    with pytest.raises(ModelConfigError, match=field) as e:
        check(config, num_classes)
    assert "\n" not in str(e.value)


def _signature_defaults(cls, names):
    """The constructor's keyword defaults for ``names``, sequences as lists (as a config stores them)."""
    params = inspect.signature(cls.__init__).parameters
    return {n: list(params[n].default) if isinstance(params[n].default, (tuple, list)) else params[n].default
            for n in names}


@pytest.mark.parametrize(("module", "cls", "defaults"), [
    ("xpnet.models", "ResNet9", DEFAULTS),
    ("xpnet.models", "Report2Net", REPORT2_DEFAULTS),
    ("xpnet.reference", "TorchResNet9", DEFAULTS),
    ("xpnet.reference", "TorchReport2Net", REPORT2_DEFAULTS),
])
def test_constructor_defaults_are_the_schemas(module, cls, defaults):
    # The constructors spell their defaults out for the reader; the schema fills a stored config's
    # missing keys. The two must agree, or a checkpoint without a key would build another network
    # than the constructor called without it.
    if module == "xpnet.reference":
        pytest.importorskip("torch")
    cls = getattr(importlib.import_module(module), cls)
    assert _signature_defaults(cls, defaults) == defaults
