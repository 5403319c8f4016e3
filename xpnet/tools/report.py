"""``xpnet report``: the report's results reproduced, beside the PyTorch twin and the seed spread.

The report (a CuPy/NumPy ResNet-9 on MNIST) gives three tables: accuracy against PyTorch (4.1.1),
a five-row ablation (4.1.2) and the wall time of 8 epochs (4.2). This command trains the grid
behind them, ``--seeds`` times each, and writes into ``--out``:

    report.md       the three tables in the report's layout, its published figure beside ours
                    (mean ± standard deviation over the seeds)
    report.json     every number, per run and per table row
    losses.png      the training loss of every run, each xpnet run and its PyTorch twin overlaid
    ablation.png    the ablation as bars with error bars, the published figures as markers
    <run>-seed<k>/  each run's own ``xpnet train`` outputs, and run.json, the settings it ran with

Runs are independent folders: the same command again skips finished runs and resumes
interrupted ones exactly (``fit``'s resume); ``mpiexec -n K xpnet report`` deals them out to K
processes (on one host or several sharing the folder). The efficiency table times a sample of training and
evaluation steps of the report's job on each framework and projects it to 8 epochs; it also
lists the measured wall time of the grid's own runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy

from xpnet import backend
from xpnet.cli.argtypes import OneLineParser, nonneg_float, nonneg_int, positive_float, positive_int, probability
from xpnet.errors import XpnetError
from xpnet.training.rundir import RunFolder
from xpnet.tools import report2

# The report's published figures (percent; seconds for 8 epochs).
PUBLISHED = {
    "accuracy": {
        "torch": {"train": 99.67, "test": 99.38},
        "sgd": {"train": 99.46, "test": 99.21},
        "adam": {"train": 99.65, "test": 99.43},
    },
    "ablation": {"baseline": 99.21, "variant1": 99.46, "variant2": 99.19, "variant3": 99.20, "variant4": 99.43},
    "efficiency": {"numpy": 48994.08, "cupy": 1508.85, "torch": 203.93},
    "epochs": 8,
}

# The grid: each run is a framework and the TrainConfig fields that set it apart.
RUNS = {
    "xpnet-sgd": dict(framework="xpnet", optimizer="sgd"),
    "torch-sgd": dict(framework="torch", optimizer="sgd"),
    "xpnet-adam": dict(framework="xpnet", optimizer="adam"),
    "torch-adam": dict(framework="torch", optimizer="adam"),
    "avg-head": dict(framework="xpnet", optimizer="sgd", head="avg"),
    "conv-shortcut": dict(framework="xpnet", optimizer="sgd", shortcut="conv"),
    "conv-shortcut-3-blocks": dict(framework="xpnet", optimizer="sgd", shortcut="conv", res_blocks=3),
}
TWINS = (("xpnet-sgd", "torch-sgd"), ("xpnet-adam", "torch-adam"))

ACCURACY_ROWS = (  # (label, run, published key)
    ("PyTorch twin (SGD)", "torch-sgd", "torch"),
    ("PyTorch twin (Adam)", "torch-adam", "torch"),
    ("xpnet (SGD)", "xpnet-sgd", "sgd"),
    ("xpnet (Adam)", "xpnet-adam", "adam"),
)
ABLATION_ROWS = (  # (label, architecture as the report words it, run, published key)
    ("Baseline", "Add residual directly - 2 ResBlock - MaxPooling (SGD)", "xpnet-sgd", "baseline"),
    ("Variant 1", "Add residual directly - 2 ResBlock - AvgPooling (SGD)", "avg-head", "variant1"),
    ("Variant 2", "Add residual through a Conv layer - 2 ResBlock - MaxPooling (SGD)", "conv-shortcut", "variant2"),
    ("Variant 3", "Add residual through a Conv layer - 3 ResBlock - MaxPooling (SGD)", "conv-shortcut-3-blocks",
     "variant3"),
    ("Variant 4", "Add residual directly - 2 ResBlock - MaxPooling (Adam)", "xpnet-adam", "variant4"),
)

# Recipes: TrainConfig fields shared by every run, then per-optimizer fields.
RECIPES = {
    # The report's table in section 3: 8 epochs, batch 8, learning rate 1e-3, Adam's default betas,
    # nothing else. Its SGD is called "a simple SGD" and given no settings of its own: plain SGD
    # (no momentum, no weight decay) at the same learning rate.
    "paper": (
        dict(epochs=8, batch_size=8, lr=1e-3, momentum=0.0, weight_decay=0.0, schedule="constant",
             label_smoothing=0.0, augment=0, width=1.0),
        {},
    ),
    # The project's default recipe (TrainConfig's defaults). It is tuned for SGD; Adam keeps the
    # report's learning rate, since 0.1 is far beyond what Adam trains with.
    "xpnet": ({}, {"adam": dict(lr=1e-3)}),
}

# --quick: the whole pipeline in seconds, for the tests (flags given explicitly still win).
QUICK = dict(epochs=1, width=0.125, train_subset=256, test_subset=500, seeds=2, efficiency_steps=3,
             efficiency_eval_batches=1)

# Flags of ``xpnet train`` that pass through to every run of the grid.
PASS_THROUGH = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule", "label_smoothing",
                "augment", "width", "dropout", "train_subset", "eval_batch_size")


class ReportError(XpnetError):
    """A report that cannot go on: one line for the user."""


# -- the grid ----------------------------------------------------------------------------------


SECTIONS = ("both", "first", "second")


def run_configs(recipe: str, overrides: dict, seeds: int, section: str = "both"):
    """-> [(run name, seed, TrainConfig)] in the order they run: seed by seed, so an early stop
    still leaves whole rows of every table. ``section``: the first report's grid, the second
    report's runs (``xpnet.tools.report2``), or both."""
    from xpnet.training.config import TrainConfig

    shared, per_optimizer = RECIPES[recipe]
    out = []
    for seed in range(seeds):
        if section in ("both", "first"):
            for name, fields in RUNS.items():
                values = {**shared, **per_optimizer.get(fields["optimizer"], {}), **fields, **overrides, "seed": seed}
                out.append((name, seed, TrainConfig(**values)))
        if section in ("both", "second"):
            out.extend((name, seed, cfg) for name, cfg in report2.run_configs(recipe, overrides, seed))
    return out


def _spec(cfg, test_subset) -> dict:
    return dict(config=dataclasses.asdict(cfg), test_subset=test_subset)


def train_run(folder: Path, cfg, data, test_subset, plots, log) -> dict:
    """One run of the grid in ``folder``: skipped when finished, resumed when interrupted."""
    from xpnet.training.config import TrainConfig
    from xpnet.training.loop import fit

    spec = _spec(cfg, test_subset)
    spec_path = folder / "run.json"
    if spec_path.exists():
        stored = json.loads(spec_path.read_text())
        # A field TrainConfig gained since takes its default, as on resume.
        stored["config"] = dataclasses.asdict(TrainConfig.from_dict(stored.get("config", {})))
        if stored != spec:
            raise ReportError(
                f"{folder} holds a run with other settings; choose another --out or move that folder away"
            )
    elif folder.exists() and any(folder.iterdir()):
        raise ReportError(f"{folder} exists and is not a report run; choose another --out")
    run = RunFolder(folder)
    summary = run.finished(cfg.epochs)
    if summary is not None:
        return summary
    folder.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    if run.last.exists():
        log(f"  resuming {run.last}")
        return fit(None, data, run, resume=run.last, plots=plots, log=log)
    return fit(cfg, data, run, plots=plots, log=log)


# -- efficiency --------------------------------------------------------------------------------


def time_steps(cfg, data, steps, eval_batches, warmup) -> dict:
    """Mean seconds of a training step and of an evaluation batch of ``cfg``'s run on its framework
    and the current backend.

    The clock is read after a ``synchronize``; ``warmup`` untimed steps come first (PyTorch's
    first dozen steps on new shapes run several times slower than the rest).
    """
    from xpnet.data import batches
    from xpnet.training.runner import build_runner, build_schedule

    rng = numpy.random.default_rng(cfg.seed)
    runner = build_runner(cfg, 10, rng)
    schedule = build_schedule(cfg, math.ceil(len(data.train_labels) / cfg.batch_size))
    n = (steps + warmup) * cfg.batch_size
    images, labels = backend.to_device(data.train_images[:n]), backend.to_device(data.train_labels[:n])
    it = batches(images, labels, cfg.batch_size, rng, shuffle=True, augment=cfg.augment, drop_last=True,
                 inputs=cfg.inputs)
    times = []
    for i, (x, y) in enumerate(it):
        runner.synchronize()
        t0 = time.perf_counter()
        runner.forward(x, y)
        runner.backward()
        runner.step(schedule(runner.steps))
        runner.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    m = min(len(data.test_labels), eval_batches * cfg.eval_batch_size)
    test_images, test_labels = backend.to_device(data.test_images[:m]), backend.to_device(data.test_labels[:m])
    runner.evaluate(test_images[: cfg.eval_batch_size], test_labels[: cfg.eval_batch_size], cfg.eval_batch_size)
    runner.synchronize()
    t0 = time.perf_counter()
    runner.evaluate(test_images, test_labels, cfg.eval_batch_size)
    runner.synchronize()
    eval_seconds = (time.perf_counter() - t0) / math.ceil(m / cfg.eval_batch_size)
    return dict(step_seconds=statistics.fmean(times), steps=len(times), eval_batch_seconds=eval_seconds,
                eval_batches=math.ceil(m / cfg.eval_batch_size), warmup=warmup)


def efficiency(cfg, data, steps, eval_batches, epochs, train_images, test_images, log) -> dict:
    """Projected seconds of ``epochs`` epochs (``train_images`` steps' worth each, and one
    evaluation of ``test_images``) on every framework and backend that is present here."""
    targets = (("xpnet", "numpy"), ("torch", "numpy"), ("xpnet", "cupy"), ("torch", "cupy"))
    rows = {}
    for framework, backend_name in targets:
        key = f"{framework}-{'cpu' if backend_name == 'numpy' else 'gpu'}"
        why = _unavailable(framework, backend_name)
        if why:
            log(f"efficiency {key}: not measured: {why}")
            rows[key] = dict(measured=False, why=why)
            continue
        log(f"efficiency {key}: timing {steps} training steps and {eval_batches} evaluation batches")
        with backend.using(backend_name):
            t = time_steps(dataclasses.replace(cfg, framework=framework), data, steps, eval_batches,
                           warmup=10 if steps >= 20 else 2)
        per_epoch = (math.ceil(train_images / cfg.batch_size) * t["step_seconds"]
                     + math.ceil(test_images / cfg.eval_batch_size) * t["eval_batch_seconds"])
        rows[key] = dict(measured=True, projected_seconds=epochs * per_epoch, **t)
    return rows


def _efficiency_table(job, full, steps, eval_batches, epochs, log) -> dict:
    """The efficiency rows of ``job`` projected to ``epochs`` epochs, with how they were made."""
    rows = efficiency(job, full, steps, eval_batches, epochs, len(full.train_labels), len(full.test_labels), log)
    return dict(
        rows=rows, epochs=epochs, steps=steps, eval_batches=eval_batches, warmup=10 if steps >= 20 else 2,
        job=f"{'full width' if job.width == 1.0 else f'width {job.width:g}'}, batch {job.batch_size}, "
            f"evaluation batch {job.eval_batch_size}, SGD",
        train_steps_per_epoch=math.ceil(len(full.train_labels) / job.batch_size),
        eval_batches_per_epoch=math.ceil(len(full.test_labels) / job.eval_batch_size),
    )


def _unavailable(framework, backend_name) -> str | None:
    if framework == "torch":
        try:
            from xpnet.reference import runner
        except ImportError as e:
            return str(e)
        if backend_name == "cupy" and not runner.cuda_available():
            return "torch has no CUDA device here"
    if backend_name == "cupy":
        try:
            with backend.using("cupy"):
                pass
        except backend.BackendError as e:
            return str(e)
    return None


# -- tables ------------------------------------------------------------------------------------


def mean_sd(values) -> dict:
    values = [float(v) for v in values]
    sd = statistics.stdev(values) if len(values) > 1 else None
    return dict(mean=statistics.fmean(values), sd=sd, n=len(values), values=values)


def _pct(stat) -> str:
    if stat is None:
        return "not run"
    if stat["sd"] is None:
        return f"{100 * stat['mean']:.2f}"
    return f"{100 * stat['mean']:.2f} ± {100 * stat['sd']:.2f}"


def _seconds(s) -> str:
    return f"{s:,.0f} s" if s >= 100 else f"{s:,.1f} s"


def _stat(results: dict, name: str, field: str):
    """Mean ± sd of ``field`` over the seeds of run ``name`` (None where it was not run)."""
    runs = results.get(name, {})
    return mean_sd([r[field] for r in runs.values()]) if runs else None


def tables(results: dict) -> dict:
    """Per-run results {name: {seed: history}} -> the three tables' rows as numbers."""

    def stat(name, field):
        return _stat(results, name, field)

    accuracy = [
        dict(label=label, run=run, published=PUBLISHED["accuracy"][key],
             train=stat(run, "train_accuracy"), test=stat(run, "test_accuracy"))
        for label, run, key in ACCURACY_ROWS
    ]
    ablation = [
        dict(label=label, architecture=arch, run=run, published=PUBLISHED["ablation"][key],
             test=stat(run, "test_accuracy"))
        for label, arch, run, key in ABLATION_ROWS
    ]
    twins = []
    for ours, theirs in TWINS:
        seeds = sorted(set(results.get(ours, {})) & set(results.get(theirs, {})))
        if seeds:
            gaps = [results[ours][s]["test_accuracy"] - results[theirs][s]["test_accuracy"] for s in seeds]
            twins.append(dict(xpnet=ours, torch=theirs, gap=mean_sd(gaps),
                              spread=stat(ours, "test_accuracy")))
    return dict(accuracy=accuracy, ablation=ablation, twins=twins)


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        "# Reproducing the report",
        "",
        f"Scale: {s['scale']}",
        "",
        f"Command: `{s['command']}`",
        "",
        f"Machine: {s['machine']}; {s['when']}. Our figures are mean ± standard deviation over the "
        f"seeds (n = {s['seeds']}); the report's are single runs.",
        "",
    ]
    if report["tables"] is not None:
        lines += _first_report(report)
    if report.get("second"):
        lines += report2.markdown(report["second"], _pct, _seconds)
    return "\n".join(lines)


def _first_report(report: dict) -> list[str]:
    """The first report's three tables and its figures' captions."""
    t, s, eff = report["tables"], report["settings"], report["efficiency"]
    lines = [
        "## 4.1.1 Comparison with the official implementation",
        "",
        "| | Training Set Acc. (report) | Training Set Acc. (ours) | Test-set Acc. (report) | Test-set Acc. (ours) |",
        "| :----: | :----: | :----: | :----: | :----: |",
    ]
    for r in t["accuracy"]:
        lines.append(f"| {r['label']} | {r['published']['train']:.2f} | {_pct(r['train'])} | "
                     f"{r['published']['test']:.2f} | {_pct(r['test'])} |")
    lines += [
        "",
        "The report's row is \"Official PyTorch Implementation\" without its optimizer, so both twins "
        "stand beside it. Training accuracy is the running accuracy over the last epoch's batches, "
        "in training mode.",
        "",
    ]
    for w in t["twins"]:
        g = w["gap"]
        sd = "" if g["sd"] is None else f" ± {100 * g['sd']:.2f}"
        spread = w["spread"]["sd"]
        lines.append(
            f"- Test accuracy of {w['xpnet']} minus its twin {w['torch']}, same seed: "
            f"{100 * g['mean']:+.2f}{sd} points "
            f"(per seed: {', '.join(f'{100 * v:+.2f}' for v in g['values'])}); seed-to-seed spread of "
            f"{w['xpnet']}: {'n/a' if spread is None else f'{100 * spread:.2f}'} points."
        )
    lines += [
        "",
        "## 4.1.2 Ablation study",
        "",
        "| | Network Architecture (Optimizer) | Test-set Acc. (report) | Test-set Acc. (ours) |",
        "| :----: | :----: | :----: | :----: |",
    ]
    for r in t["ablation"]:
        lines.append(f"| {r['label']} | {r['architecture']} | {r['published']:.2f} | {_pct(r['test'])} |")
    lines += [
        "",
        "## 4.2 Efficiency",
        "",
        "| Method | NumPy implementation | CuPy implementation | PyTorch (CPU) | PyTorch (GPU) |",
        "| :----: | :----: | :----: | :----: | :----: |",
    ]
    pub = PUBLISHED["efficiency"]
    lines.append(f"| Report: {PUBLISHED['epochs']} epochs, measured (i9-11950H / H800) | {pub['numpy']:,.2f} s | "
                 f"{pub['cupy']:,.2f} s | - | {pub['torch']:,.2f} s* |")
    if eff:
        cells = []
        for key in ("xpnet-cpu", "xpnet-gpu", "torch-cpu", "torch-gpu"):
            row = eff["rows"].get(key)
            cells.append(_seconds(row["projected_seconds"]) if row and row["measured"] else "not measured")
        lines.append(f"| Ours: {eff['epochs']} epochs, **projected** | " + " | ".join(cells) + " |")
    measured = report.get("measured_seconds", {})
    if measured:
        cells = [measured.get(k) for k in ("xpnet-cpu", "xpnet-gpu", "torch-cpu", "torch-gpu")]
        lines.append(f"| Ours: one run of this grid ({s['run_scale']}), measured | "
                     + " | ".join("-" if c is None else f"{_seconds(c['mean'])} (n = {c['n']})" for c in cells) + " |")
    lines += ["", "\\* The report does not say where its PyTorch run ran; 204 s for 8 epochs at batch 8 "
              "points to the GPU."]
    if eff:
        lines.append("")
        lines.append(
            f"Projected: the mean time of {eff['steps']} timed training steps (after {eff['warmup']} untimed ones) "
            f"and of "
            f"{eff['eval_batches']} evaluation batch(es), each on {eff['job']}, times "
            f"{eff['train_steps_per_epoch']:,} steps and {eff['eval_batches_per_epoch']} evaluation batches per "
            f"epoch, times {eff['epochs']} epochs. Not a whole run."
        )
        for key, row in eff["rows"].items():
            if not row["measured"]:
                lines.append(f"- {key}: not measured: {row['why']}")
    lines += [
        "",
        "## Figures",
        "",
        "- `losses.png`: the training loss of every run (a moving average over steps); each xpnet run "
        "and its PyTorch twin overlaid.",
        "- `ablation.png`: the ablation's test accuracy, mean ± standard deviation, the report's figures as markers.",
        "",
    ]
    return lines


# -- figures -----------------------------------------------------------------------------------


def _smooth(values, window):
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
                x, y = _smooth(h["losses"], max(1, n // 50, min(5, n // 4)))  # a short run too
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


# -- the command -------------------------------------------------------------------------------


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default where it has one (None means "the recipe's" or "see the help")."""

    def _get_help_string(self, action):
        if action.default in (None, False):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from xpnet.training.config import SCHEDULES

    p = OneLineParser(
        prog="xpnet report",
        description="Train the report's grid (xpnet, its PyTorch twin, the ablation) over several seeds and "
        "write report.md, report.json and figures. Run it again to resume.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--recipe", choices=sorted(RECIPES), default="paper",
                   help="paper: the report's settings; xpnet: the project's default recipe")
    p.add_argument("--section", choices=SECTIONS, default="both",
                   help="the first report's grid, the second report's runs (its network, dropout sweep and "
                   "twin), or both")
    p.add_argument("--quick", action="store_true",
                   help="tiny width, a subset, one epoch, two seeds: the whole pipeline in seconds")
    p.add_argument("--seeds", type=positive_int, default=None, help="seeds 0..N-1 per run (default 3)")
    p.add_argument("--out", type=Path, default=Path("runs/report"), help="report folder")
    p.add_argument("--data-dir", type=Path, default=None, help="MNIST folder (default: $XPNET_DATA or ./data/mnist)")
    p.add_argument("--backend", choices=backend.BACKENDS, default="numpy", help="array backend of the grid's runs")
    p.add_argument("--test-subset", type=nonneg_int, default=None, help="evaluate on the first N test images (0: all)")
    p.add_argument("--efficiency-steps", type=nonneg_int, default=None,
                   help="training steps timed per framework for the efficiency table (0: skip it; default 50)")
    p.add_argument("--efficiency-eval-batches", type=positive_int, default=None,
                   help="evaluation batches timed per framework (default 5)")
    p.add_argument("--efficiency-width", type=positive_float, default=None,
                   help="width of the timed job (default: the runs' width)")
    p.add_argument("--no-plots", action="store_true", help="skip every PNG figure")
    g = p.add_argument_group("flags of xpnet train passed to every run (default: the recipe's)")
    g.add_argument("--epochs", type=positive_int)
    g.add_argument("--batch-size", type=positive_int)
    g.add_argument("--lr", type=positive_float)
    g.add_argument("--momentum", type=nonneg_float)
    g.add_argument("--weight-decay", type=nonneg_float)
    g.add_argument("--schedule", choices=SCHEDULES)
    g.add_argument("--label-smoothing", type=probability)
    g.add_argument("--augment", type=nonneg_int)
    g.add_argument("--width", type=positive_float)
    g.add_argument("--dropout", type=probability)
    g.add_argument("--train-subset", type=nonneg_int)
    g.add_argument("--eval-batch-size", type=positive_int)
    return p


def _machine() -> str:
    import os
    import platform

    from xpnet.functional import parallel
    from xpnet.tools.machine import cpu_info, describe_cpu

    wait = os.environ.get("OMP_WAIT_POLICY")
    return (f"{describe_cpu(cpu_info())}, {platform.system()}; xpnet kernel threads "
            f"{parallel.threads()}{f', PyTorch OpenMP wait policy {wait}' if wait else ''}")


def _scale(recipe, cfg, seeds, test_subset, train_images, quick) -> str:
    subset = (f"the first {cfg.train_subset:,} training images" if cfg.train_subset
              else f"all {train_images:,} training images")
    test = f"the first {test_subset:,} test images" if test_subset else "the whole test set"
    width = "full width" if cfg.width == 1.0 else f"width {cfg.width:g}"
    return (f"{'--quick, ' if quick else ''}recipe `{recipe}` ({width}, {cfg.epochs} epoch(s), batch {cfg.batch_size}, "
            f"{subset}, {test}), {seeds} seed(s) per run.")


def run(args, log=print, comm=None) -> dict | None:
    """The grid, then the report. Under ``mpiexec -n K`` (``comm``: an ``xpnet.distributed``
    communicator) each rank trains every K-th run of the grid, each run in one process; rank 0
    then times the efficiency rows and writes the report (and returns it; the others None)."""
    from xpnet import distributed
    from xpnet.data import MNIST, default_data_dir, load_mnist
    from xpnet.training.config import TrainingError

    comm = distributed.Solo() if comm is None else comm

    quick = QUICK if args.quick else {}
    seeds = args.seeds or quick.get("seeds", 3)
    test_subset = args.test_subset if args.test_subset is not None else quick.get("test_subset", 0)
    eff_steps = args.efficiency_steps if args.efficiency_steps is not None else quick.get("efficiency_steps", 50)
    eff_batches = args.efficiency_eval_batches or quick.get("efficiency_eval_batches", 5)
    overrides = {k: v for k, v in quick.items() if k in PASS_THROUGH}
    overrides.update({k: getattr(args, k) for k in PASS_THROUGH if getattr(args, k) is not None})
    grid = run_configs(args.recipe, overrides, seeds, args.section)
    first = args.section in ("both", "first")
    wait_policy = None
    if any(cfg.framework == "torch" for _, _, cfg in grid):
        from xpnet.tools.machine import passive_omp_wait

        wait_policy = passive_omp_wait()  # before torch starts its OpenMP threads
        try:
            import xpnet.reference  # noqa: F401
        except ImportError as e:
            raise ReportError(str(e)) from e

    backend.use(args.backend)
    data = full = comm.root_first(load_mnist, args.data_dir or default_data_dir(), True, sys.stderr.isatty())
    if test_subset:
        if test_subset > len(data.test_labels):
            raise ReportError(f"--test-subset {test_subset} exceeds the {len(data.test_labels)} test images")
        data = MNIST(data.train_images, data.train_labels, data.test_images[:test_subset],
                     data.test_labels[:test_subset])
    if grid[0][2].train_subset > len(data.train_labels):
        raise ReportError(f"--train-subset {grid[0][2].train_subset} exceeds the {len(data.train_labels)} "
                          "training images")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    command = "xpnet report " + " ".join(args.argv)
    mine = grid[comm.rank :: comm.size]
    if comm.size > 1:
        # Runs are independent: each rank takes every size-th one, trained in one process.
        def log(line, say=log):
            say(f"[rank {comm.rank}] {line}")
    log(f"report: {len(grid)} runs ({len(grid) // seeds} per seed, {seeds} seed(s)) into {out}"
        + (f"; {len(mine)} of them on this rank" if comm.size > 1 else ""))

    spent, trained = 0.0, 0
    for i, (name, seed, cfg) in enumerate(mine):
        folder = out / f"{name}-seed{seed}"
        left = len(mine) - i
        eta = f", about {_seconds(spent / trained * left)} left" if trained else ""
        log(f"[{i + 1}/{len(mine)}] {name}, seed {seed}{eta}")
        t0 = time.perf_counter()
        already = RunFolder(folder).finished(cfg.epochs) is not None and (folder / "run.json").exists()
        try:
            train_run(folder, cfg, data, test_subset, plots=not (args.no_plots or args.quick),
                      log=lambda s: log("  " + s))
        except TrainingError as e:
            raise ReportError(f"{folder}: {e}") from e
        if already:
            log("  finished before: skipped")
        else:
            spent += time.perf_counter() - t0
            trained += 1
    comm.barrier()
    if not comm.is_root:
        return None
    results = {}
    for name, seed, _ in grid:
        results.setdefault(name, {})[seed] = RunFolder(out / f"{name}-seed{seed}").history()

    eff = second = None
    if eff_steps and first:
        cfg0 = grid[0][2]
        job = dataclasses.replace(cfg0, width=args.efficiency_width or cfg0.width, train_subset=0)
        eff = _efficiency_table(job, full, eff_steps, eff_batches, PUBLISHED["epochs"], log)
    if args.section in ("both", "second"):
        job = report2.efficiency_job(grid)
        job = dataclasses.replace(job, width=args.efficiency_width or job.width)
        second = dict(
            settings=dict(
                scale=report2.scale(grid, len(data.train_labels), test_subset, seeds),
                recipe=", ".join(f"{k} {v}" for k, v in report2.recipes()[args.recipe].items()),
            ),
            tables=report2.tables(results, lambda name, field: _stat(results, name, field)),
            efficiency=_efficiency_table(job, full, eff_steps, eff_batches, report2.PUBLISHED["epochs"], log)
            if eff_steps else None,
        )

    device = "gpu" if args.backend == "cupy" else "cpu"
    measured = {}
    for name in ("xpnet-sgd", "torch-sgd"):
        if results.get(name):
            measured[f"{name.split('-')[0]}-{device}"] = mean_sd([h["seconds"] for h in results[name].values()])
    cfg0 = grid[0][2]
    report = dict(
        settings=dict(
            recipe=args.recipe, quick=args.quick, seeds=seeds, test_subset=test_subset,
            backend=args.backend, command=command, machine=_machine(), omp_wait_policy=wait_policy,
            when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            scale=_scale(args.recipe, cfg0, seeds, test_subset, len(data.train_labels), args.quick),
            run_scale=f"{'full width' if cfg0.width == 1.0 else f'width {cfg0.width:g}'}, {cfg0.epochs} epoch(s)"
                      f"{f', {cfg0.train_subset:,} images' if cfg0.train_subset else ''}",
            configs={f"{n}-seed{s}": dataclasses.asdict(c) for n, s, c in grid},
        ),
        published=PUBLISHED,
        runs={n: {str(s): {k: v for k, v in h.items() if k != "losses"} for s, h in r.items()}
              for n, r in results.items()},
        tables=tables(results) if first else None,
        efficiency=eff,
        measured_seconds=measured,
        second=second,
    )
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    written = [out / "report.md", out / "report.json"]
    if not args.no_plots:
        if first:
            written += figures(out, results, report["tables"])
        if second:
            folder = out / f"{report2.MAIN}-seed0"
            cases = report2.failure_cases(folder, data) if report2.MAIN in results else None
            written += report2.figures(out, results, second, cases, _smooth)
    log("written: " + ", ".join(str(p) if i == 0 else p.name for i, p in enumerate(written)))
    return report


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from xpnet import distributed

    try:
        comm = distributed.world()  # one process, or one rank of `mpiexec -n K xpnet report`
        with comm.guard("xpnet report", XpnetError):
            run(args, log=lambda s: print(s, flush=True), comm=comm)
    except KeyboardInterrupt:
        print("xpnet report: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except XpnetError as e:
        print(f"xpnet report: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
