"""Figures of a run: loss and accuracy curves, a grid of misclassified digits, a confusion matrix.

Needs matplotlib, a dependency of xpnet; drawn off-screen with the Agg backend.
"""

from __future__ import annotations

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


def curves(path, history):
    """Train and test loss and accuracy per epoch, from metrics rows."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax1.plot(epochs, [r["test_loss"] for r in history], "s-", label="test")
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax2.plot(epochs, [100 * r["train_accuracy"] for r in history], "o-", label="train")
    ax2.plot(epochs, [100 * r["test_accuracy"] for r in history], "s-", label="test")
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def failures(path, images, labels, preds, limit=40, columns=10):
    """A grid of misclassified digits titled "prediction / label" (the report's failure grid)."""
    plt = _pyplot()
    wrong = numpy.flatnonzero(numpy.asarray(preds) != numpy.asarray(labels))[:limit]
    rows = max(1, -(-len(wrong) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.5 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), wrong):
        ax.imshow(images[i], cmap="gray")
        ax.set_title(f"{preds[i]} / {labels[i]}", fontsize=9, color="crimson")
    fig.suptitle(f"misclassified test digits: prediction / label ({len(wrong)} shown)", fontsize=10)
    fig.tight_layout()
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


def write_all(out_dir, history, images, labels, preds, num_classes):
    """curves.png, failures.png and confusion.png into ``out_dir``."""
    out_dir = Path(out_dir)
    curves(out_dir / "curves.png", history)
    failures(out_dir / "failures.png", images, labels, preds)
    confusion(out_dir / "confusion.png", labels, preds, num_classes)
