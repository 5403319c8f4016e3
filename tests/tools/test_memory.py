"""xpnet.tools.memory: the estimate of a training step's memory against a measured step."""

import pytest

import dataclasses

from xpnet.tools import memory
from xpnet.training.config import TrainConfig

NARROW = TrainConfig(width=0.125)


def test_estimate_tracks_a_measured_step():
    measured = memory.step_peak_bytes(NARROW, 10, (28, 28), 256)
    estimate = memory.estimate_step_bytes(NARROW, 10, (28, 28), 256)
    # Extrapolated from two smaller batches; rough, but close enough to refuse what cannot fit.
    assert 0.9 * measured < estimate < 1.4 * measured
    assert memory.estimate_step_bytes(NARROW, 10, (28, 28), 25_600) > 50 * measured


def test_wider_nets_need_more():
    base = memory.step_peak_bytes(NARROW, 10, (28, 28), 16)
    assert memory.step_peak_bytes(dataclasses.replace(NARROW, width=0.5), 10, (28, 28), 16) > 2 * base


@pytest.mark.parametrize("need, available, expected", [
    (10, None, (True, False)), (10, 100, (True, False)), (90, 100, (True, True)), (101, 100, (False, True)),
])
def test_fits(need, available, expected):
    assert memory.fits(need, available) == expected


def test_available_memory_is_read_where_the_system_says():
    available = memory.available_bytes()
    assert available is None or available > 0
