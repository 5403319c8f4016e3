"""What the run's figures draw (line data, labels, limits), not their pixels."""

import numpy
import pytest

pytest.importorskip("matplotlib")

from xpnet.training import plots  # noqa: E402


def history(n=3):
    return [dict(epoch=e, train_loss=1.0 / e, test_loss=0.8 / e, train_accuracy=0.9 + 0.02 * e,
                 test_accuracy=0.91 + 0.02 * e) for e in range(1, n + 1)]


def test_curves_draw_every_step_smoothed_with_epoch_boundaries_and_test_points(tmp_path):
    rng = numpy.random.default_rng(0)
    steps = numpy.arange(300)
    losses = 2.0 * numpy.exp(-steps / 80) + rng.normal(0, 0.1, 300)
    fig = plots.curves_figure(history(3), (steps, losses))
    loss_ax, acc_ax = fig.axes
    raw, smoothed, test = loss_ax.get_lines()[:3]
    assert numpy.allclose(raw.get_ydata(), losses) and numpy.allclose(raw.get_xdata(), (steps + 1) / 100)
    # The smoothed line follows the data with less noise.
    s = smoothed.get_ydata()
    assert len(s) == 300 and numpy.std(numpy.diff(s)) < 0.3 * numpy.std(numpy.diff(losses))
    assert numpy.abs(s - 2.0 * numpy.exp(-steps / 80)).mean() < 0.05
    assert list(test.get_xdata()) == [1, 2, 3] and numpy.allclose(test.get_ydata(), [0.8, 0.4, 0.8 / 3])
    for ax in (loss_ax, acc_ax):
        boundaries = sorted(line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == ":")
        assert boundaries == [1, 2]
        lo, hi = ax.get_xlim()
        assert lo <= 0.5 and hi >= 3
    labels = [t.get_text() for t in acc_ax.texts]
    assert labels == ["93.00%", "95.00%", "97.00%"]
    assert "best test 97.00% at epoch 3" in acc_ax.get_title()
    lo, hi = acc_ax.get_ylim()
    assert lo < 92 and hi > 97.5  # the points and their labels inside the frame
    assert {t.get_text() for t in loss_ax.get_legend().get_texts()} >= {"test loss", "train loss, every step"}


def test_smooth_is_a_centred_mean_that_keeps_the_length():
    assert numpy.allclose(plots.smooth([0, 0, 3, 0, 0], 3), [0, 1, 1, 1, 0])
    assert numpy.allclose(plots.smooth([1, 2, 3], 1), [1, 2, 3])
    assert len(plots.smooth([2, 4], 10)) == 2


def test_write_all_reads_the_runs_losses_csv(tmp_path):
    (tmp_path / "losses.csv").write_text("step,loss\n" + "".join(f"{i},{1 + i % 3}\n" for i in range(20)))
    steps, values = plots.read_losses(tmp_path / "losses.csv")
    assert list(steps) == list(range(20)) and values[:3].tolist() == [1, 2, 3]
    assert plots.read_losses(tmp_path / "none.csv") is None
    images = numpy.zeros((4, 28, 28), numpy.uint8)
    plots.write_all(tmp_path, history(2), images, numpy.array([0, 1, 2, 3]), numpy.array([0, 1, 3, 3]), 10)
    assert all((tmp_path / f).stat().st_size > 0 for f in ("curves.png", "failures.png", "confusion.png"))


def test_failure_mosaic_places_each_wrong_digit_under_its_caption_row():
    rng = numpy.random.default_rng(1)
    images = rng.integers(0, 256, (7, 5, 4)).astype(numpy.uint8)
    wrong = numpy.array([1, 4, 6])
    canvas, corners = plots.failure_mosaic(images, wrong, columns=2, gap=1, title_rows=3)
    assert canvas.shape == (2 * (3 + 5 + 1), 2 * (4 + 1))
    assert corners == [(3, 0), (3, 5), (12, 0)]
    for (top, left), i in zip(corners, wrong):
        assert numpy.array_equal(canvas[top:top + 5, left:left + 4], images[i])
    drawn = numpy.zeros(canvas.shape, bool)
    for top, left in corners:
        drawn[top:top + 5, left:left + 4] = True
    assert numpy.isnan(canvas[~drawn]).all()  # captions, gaps and the empty fourth cell stay blank


def test_failures_captions_name_prediction_then_label(tmp_path, monkeypatch):
    plt = plots._pyplot()
    drawn = []
    monkeypatch.setattr(plt, "close", drawn.append)
    labels, preds = numpy.array([3, 1, 4, 1, 5]), numpy.array([3, 7, 4, 2, 5])
    plots.failures(tmp_path / "f.png", numpy.zeros((5, 28, 28), numpy.uint8), labels, preds)
    (fig,) = drawn
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.texts] == ["7 / 1", "2 / 1"]
    assert "(2 shown)" in fig._suptitle.get_text() and (tmp_path / "f.png").stat().st_size > 0
    monkeypatch.undo()
    plt.close(fig)


def test_a_partial_last_epoch_ends_where_its_last_step_does():
    # --epochs 1.3 at 100 steps an epoch: 130 steps, two rows, the second after 0.3 of an epoch.
    steps = numpy.arange(130)
    fig = plots.curves_figure(history(2), (steps, numpy.linspace(2, 0.5, 130)), steps_per_epoch=100)
    loss_ax, acc_ax = fig.axes
    raw, _, test = loss_ax.get_lines()[:3]
    assert numpy.allclose(raw.get_xdata(), (steps + 1) / 100)
    assert numpy.allclose(test.get_xdata(), [1, 1.3])
    for ax in (loss_ax, acc_ax):
        assert [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"] == [1]
    assert "at epoch 1.3" in acc_ax.get_title()
