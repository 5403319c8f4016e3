"""xpnet.errors: one base class for every error a user can cause, and one-line messages."""

import pytest

from xpnet import backend, checkpoint, distributed
from xpnet.errors import UserError
from xpnet.data import DataError
from xpnet.data.images import ImageError
from xpnet.functional import LabelError
from xpnet.errors import XpnetError, one_line
from xpnet.models.schema import ModelConfigError
from xpnet.tools.report import ReportError
from xpnet.training.config import TrainingError
from xpnet.training.rundir import RunError

USER_ERRORS = (UserError, DataError, ImageError, checkpoint.CheckpointError, TrainingError, RunError,
               backend.BackendError, distributed.DistributedError, ModelConfigError, ReportError, LabelError)


@pytest.mark.parametrize("cls", USER_ERRORS, ids=lambda c: c.__name__)
def test_every_user_error_is_an_xpnet_error(cls):
    assert issubclass(cls, XpnetError)
    with pytest.raises(XpnetError, match="bad"):
        raise cls("bad")


def test_the_builtin_bases_are_kept():
    # Callers that caught ValueError or RuntimeError before still do.
    assert issubclass(DataError, ValueError) and issubclass(checkpoint.CheckpointError, ValueError)
    assert issubclass(backend.BackendError, RuntimeError) and issubclass(TrainingError, RuntimeError)


def test_one_line_folds_whitespace_and_caps_the_length():
    assert one_line(ValueError("a\n  b\tc ")) == "a b c"
    assert len(one_line(ValueError("x" * 1000))) == 300
    assert one_line(ValueError("y" * 50), limit=10) == "y" * 10
