"""The report's figures: the training loss of every run, and the ablation against the report."""

from __future__ import annotations

from pathlib import Path

import numpy

from xpnet.tools.report.grid import TWINS


def smooth(values, window):
    v = numpy.asarray(values, dtype=numpy.float64)
    if len(v) < 2 or window < 2:
        return numpy.arange(len(v)), v
    window = min(window, len(v))
    c = numpy.cumsum(numpy.insert(v, 0, 0.0))
    return numpy.arange(window - 1, len(v)), (c[window:] - c[:-window]) / window


# One colour per variant; a PyTorch twin is drawn dashed in its xpnet run's colour.
VARIANT_COLOURS = {"xpnet-sgd": "tab:blue", "xpnet-adam": "tab:red", "avg-head": "tab:green",
                   "conv-shortcut": "tab:purple", "conv-shortcut-3-blocks": "tab:brown"}
RUN_LABELS = {"xpnet-sgd": "xpnet, SGD", "torch-sgd": "PyTorch twin, SGD", "xpnet-adam": "xpnet, Adam",
              "torch-adam": "PyTorch twin, Adam", "avg-head": "average-pool head", "conv-shortcut": "conv shortcut",
              "conv-shortcut-3-blocks": "conv shortcut, 3 blocks"}


def _colour(name):
    return VARIANT_COLOURS.get(name.replace("torch-", "xpnet-"), "black")


def loss_figure(results: dict):
    """The training loss of every run (smoothed), as a matplotlib Figure: a panel per xpnet/twin
    pair and one for the ablation variants; each variant in its own colour, every seed drawn,
    a twin dashed in its xpnet run's colour, on a linear axis."""
    from xpnet.training.plots import _pyplot

    plt = _pyplot()
    panels = [(f"{RUN_LABELS[a]} and its PyTorch twin", (a, b)) for a, b in TWINS]
    panels.append(("ablation variants (SGD unless named)",
                   ("xpnet-sgd", "avg-head", "conv-shortcut", "conv-shortcut-3-blocks", "xpnet-adam")))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5.4), squeeze=False)
    for ax, (title, names) in zip(axes[0], panels):
        for name in names:
            for k, (seed, h) in enumerate(sorted(results.get(name, {}).items())):
                if not h["losses"]:
                    continue
                n = len(h["losses"])
                x, y = smooth(h["losses"], max(1, n // 50, min(5, n // 4)))  # a short run too
                twin = name.startswith("torch")
                ax.plot(x, y, "--" if twin else "-", color=_colour(name), alpha=0.85, lw=1.6 if twin else 1.2,
                        label=(RUN_LABELS[name] + (" (dashed)" if twin else "")) if k == 0 else None)
        ax.set(title=title, xlabel="training step", ylabel="training loss (smoothed)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # below the panel, off the curves
            ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def ablation_figure(rows):
    """The ablation table as a matplotlib Figure: our mean test accuracy with its spread over
    seeds beside the report's figure for each variant, the variants named by what they change,
    the y axis around all of the values."""
    from xpnet.training.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.4))
    xs = numpy.arange(len(rows))
    means = numpy.array([100 * r["test"]["mean"] if r["test"] else numpy.nan for r in rows])
    sds = numpy.array([100 * (r["test"]["sd"] or 0.0) if r["test"] else 0.0 for r in rows])
    published = numpy.array([r["published"] for r in rows], dtype=float)
    ax.errorbar(xs - 0.08, means, yerr=sds, fmt="o", color="tab:blue", capsize=5, markersize=8,
                label="xpnet (mean ± sd over seeds)")
    ax.plot(xs + 0.08, published, "D", color="tab:red", markersize=8, label="the report")
    values = numpy.concatenate([(means - sds)[numpy.isfinite(means)], (means + sds)[numpy.isfinite(means)], published])
    lo, hi = float(values.min()), float(values.max())
    pad = max(0.1, 0.15 * (hi - lo))
    ax.set_ylim(lo - pad, min(hi + pad, 100.0 + 0.05 * (hi - lo) + 0.05))  # room above 100 % only for markers
    ax.set_xlim(-0.6, len(rows) - 0.4)
    names = [f"{r['label']}\n{_short_architecture(r.get('architecture', ''))}" for r in rows]
    ax.set_xticks(xs, names, fontsize=8)
    ax.set(ylabel="test accuracy (%)", title="Ablation (section 4.1.2): xpnet against the report")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=9, loc="best")
    fig.tight_layout()
    return fig


def _short_architecture(text):
    """'Add residual through a Conv layer - 3 ResBlock - MaxPooling (SGD)' -> 'conv shortcut',
    '3 blocks', 'max pool', 'SGD' on four lines."""
    if not text:
        return ""
    parts = [p.strip() for p in text.replace("(", "- ").replace(")", "").split(" - ")]
    words = {"Add residual directly": "identity shortcut", "Add residual through a Conv layer": "conv shortcut",
             "MaxPooling": "max pool", "AvgPooling": "average pool"}
    return "\n".join(words.get(p, p.replace(" ResBlock", " blocks")) for p in parts if p)


def figures(out: Path, results: dict, tables_: dict) -> list[Path]:
    """losses.png and ablation.png into ``out`` -> their paths."""
    from xpnet.training.plots import _pyplot

    plt = _pyplot()
    written = []
    for name, fig in (("losses.png", loss_figure(results)), ("ablation.png", ablation_figure(tables_["ablation"]))):
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)
    return written
