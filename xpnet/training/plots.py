"""Figures of a run: loss curves from every step and accuracy per epoch, a grid of misclassified
digits, a confusion matrix.

Needs matplotlib, a dependency of xpnet; drawn off-screen with the Agg backend.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix(labels, preds, num_classes):
    """labels, preds: (N,) ints -> (K, K) counts, rows = true class, columns = prediction."""
    m = numpy.zeros((num_classes, num_classes), dtype=numpy.int64)
    numpy.add.at(m, (numpy.asarray(labels), numpy.asarray(preds)), 1)
    return m


def read_losses(path):
    """losses.csv -> (steps (S,) int, losses (S,) float), or None when there is no such file."""
    import csv

    path = Path(path)
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]
    if not rows:
        return None
    steps, losses = zip(*rows)
    return numpy.asarray(steps), numpy.asarray(losses)


def smooth(values, window):
    """A centred moving average of ``values`` (S,) over ``window`` steps, shrinking at the ends
    -> (S,) floats."""
    v = numpy.asarray(values, dtype=numpy.float64)
    window = max(1, min(int(window), len(v)))
    c = numpy.concatenate([[0.0], numpy.cumsum(v)])
    i = numpy.arange(len(v))
    lo = numpy.clip(i - window // 2, 0, len(v))
    hi = numpy.clip(i - window // 2 + window, 0, len(v))
    return (c[hi] - c[lo]) / (hi - lo)


def curves_figure(history, losses=None, steps_per_epoch=None):
    """The training curves as a matplotlib Figure.

    Left: the training loss of every step (``losses``: (steps, values) from losses.csv; faint)
    and its moving average, the test loss at each epoch's end (markers), and the epoch
    boundaries (dotted). Right: train and test accuracy per epoch, each test point labelled
    with its value. Without per-step losses the left panel falls back to per-epoch train loss.
    """
    plt = _pyplot()
    epochs = numpy.array([r["epoch"] for r in history], dtype=numpy.float64)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    if losses is not None and len(losses[0]) > 1:
        steps, values = losses
        per_epoch = steps_per_epoch or max(1, round((int(steps.max()) + 1) / max(1, len(history))))
        x = (steps + 1) / per_epoch  # in epochs: step k of epoch e ends at e - 1 + (k + 1) / per_epoch
        # A partial last epoch (--epochs 1.3) ends where its last step does, not at a whole epoch.
        epochs = numpy.minimum(epochs, float(x[-1])) if steps_per_epoch else epochs
        window = max(5, len(values) // 50)
        ax1.plot(x, values, color="tab:blue", alpha=0.25, linewidth=0.7, label="train loss, every step")
        ax1.plot(x, smooth(values, window), color="tab:blue", linewidth=1.8,
                 label=f"train loss, mean of {window} steps")
    else:
        ax1.plot(epochs, [r["train_loss"] for r in history], "o-", color="tab:blue", label="train loss (epoch mean)")
    ax1.plot(epochs, [r["test_loss"] for r in history], "s", color="tab:orange", markersize=7, label="test loss")
    ax1.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax2.plot(epochs, [100 * r["train_accuracy"] for r in history], "o-", color="tab:blue", label="train")
    test = [100 * r["test_accuracy"] for r in history]
    ax2.plot(epochs, test, "s-", color="tab:orange", label="test")
    for e, a in zip(epochs, test):
        ax2.annotate(f"{a:.2f}%", (e, a), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8,
                     color="tab:orange")
    best = max(range(len(test)), key=test.__getitem__) if test else None
    title = "Accuracy" if best is None else f"Accuracy (best test {test[best]:.2f}% at epoch {epochs[best]:g})"
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title=title)
    ax2.margins(y=0.15)  # room for the labels above the points
    last = float(epochs.max()) if len(epochs) else 1.0
    for ax in (ax1, ax2):
        for e in range(1, math.ceil(last)):
            ax.axvline(e, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xlim(0 if ax is ax1 and losses is not None else 0.5, last + 0.25)
        ax.set_xticks(range(1, int(last) + 1) if last <= 20 else ax.get_xticks())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def curves(path, history, losses=None, steps_per_epoch=None):
    """curves.png: see ``curves_figure``."""
    plt = _pyplot()
    fig = curves_figure(history, losses, steps_per_epoch)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def failure_mosaic(images, wrong, columns, gap=2, title_rows=9):
    """The digits ``images[wrong]`` (each (H, W)) tiled ``columns`` to a row on one canvas, with
    ``title_rows`` blank rows above each digit for its caption and ``gap`` pixels between cells
    -> (canvas (R*(title_rows+H+gap), columns*(W+gap)) float, the top-left (row, col) of each digit).
    Cells without a digit stay blank (NaN, drawn as the background)."""
    h, w = images.shape[1:3]
    rows = max(1, -(-len(wrong) // columns))
    cell_h, cell_w = title_rows + h + gap, w + gap
    canvas = numpy.full((rows * cell_h, columns * cell_w), numpy.nan)
    corners = []
    for k, i in enumerate(wrong):
        r, c = divmod(k, columns)
        top, left = r * cell_h + title_rows, c * cell_w
        canvas[top:top + h, left:left + w] = images[i]
        corners.append((top, left))
    return canvas, corners


def failures(path, images, labels, preds, limit=40, columns=10):
    """A grid of misclassified digits titled "prediction / label" (the report's failure grid).

    Drawn as one image with a caption over each digit rather than an axes per digit: the same
    figure in about a sixth of the time (0.13-0.2 s against 1.0-1.1 s for 40 digits, on the
    2-core Intel Xeon), which a short run feels.
    """
    plt = _pyplot()
    images = numpy.asarray(images)
    wrong = numpy.flatnonzero(numpy.asarray(preds) != numpy.asarray(labels))[:limit]
    canvas, corners = failure_mosaic(images, wrong, columns)
    height, width = canvas.shape
    inches = 1.3 * columns  # as wide as the old axes-per-digit grid; tall as the canvas needs
    fig = plt.figure(figsize=(inches, inches * height / width + 0.4))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - 0.4 / fig.get_figheight()))
    ax.imshow(canvas, cmap=plt.get_cmap("gray").with_extremes(bad="white"), interpolation="nearest")
    for (top, left), i in zip(corners, wrong):
        ax.text(left + images.shape[2] / 2, top - 1.5, f"{preds[i]} / {labels[i]}", ha="center", va="bottom",
                fontsize=9, color="crimson")
    ax.axis("off")
    fig.suptitle(f"misclassified test digits: prediction / label ({len(wrong)} shown)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion(path, labels, preds, num_classes):
    """The confusion matrix as a heatmap with counts."""
    plt = _pyplot()
    m = confusion_matrix(labels, preds, num_classes)
    fig, ax = plt.subplots(figsize=(6, 5.4))
    im = ax.imshow(numpy.log1p(m), cmap="Blues")
    for (i, j), v in numpy.ndenumerate(m):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                    color="white" if v > m.max() / 2 else "black")
    ax.set(xlabel="prediction", ylabel="label", title="Confusion matrix (test set)",
           xticks=range(num_classes), yticks=range(num_classes))
    fig.colorbar(im, ax=ax, label="log(1 + count)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(out_dir, history, images, labels, preds, num_classes, steps_per_epoch=None):
    """curves.png, failures.png and confusion.png into ``out_dir``."""
    out_dir = Path(out_dir)
    curves(out_dir / "curves.png", history, read_losses(out_dir / "losses.csv"), steps_per_epoch)
    failures(out_dir / "failures.png", images, labels, preds)
    confusion(out_dir / "confusion.png", labels, preds, num_classes)
