"""xpnet.training.config: the bounds of a run's number of epochs, and how it is written."""

import math

import numpy
import pytest

from xpnet.training.config import MAX_EPOCHS, ConfigError, TrainConfig, epochs_text


@pytest.mark.parametrize("epochs", [1, 4, MAX_EPOCHS, 1.3, 0.01, 2.0, numpy.int64(3), numpy.float64(0.5)])
def test_positive_epochs_are_accepted_and_an_int_stays_an_int(epochs):
    cfg = TrainConfig(epochs=epochs).check()
    assert cfg.epochs == epochs and type(cfg.epochs) is type(epochs)


@pytest.mark.parametrize("epochs", [0, -1, 0.0, -0.5, math.nan, math.inf, MAX_EPOCHS + 1, MAX_EPOCHS + 0.5,
                                    True, "2", None])
def test_epochs_out_of_bounds_are_one_line_naming_the_field(epochs):
    with pytest.raises(ConfigError) as e:
        TrainConfig(epochs=epochs).check()
    assert "\n" not in str(e.value) and str(e.value).startswith("config.epochs ")
    with pytest.raises(ConfigError, match=r"^--epochs must be a finite number in \(0, 1000000\]"):
        TrainConfig(epochs=epochs).check(flags=True)


@pytest.mark.parametrize("epochs, text", [(4, "4"), (1.3, "1.3"), (0.1 + 0.2, "0.3"), (1.3000000000000003, "1.3"),
                                          (2.0, "2"), (numpy.int64(7), "7"), (123456.25, "123456.25")])
def test_epochs_are_written_plainly(epochs, text):
    assert epochs_text(epochs) == text
