"""The report's grid: the runs behind its tables (``RUNS``, ``TWINS``, the recipes), the figures it
publishes, and one run of the grid in its own folder, skipped when finished and resumed when not."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from xpnet.errors import XpnetError
from xpnet.tools import report2
from xpnet.training.rundir import RunFolder

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


SECTIONS = ("both", "first", "second")


def run_configs(recipe: str, overrides: dict, seeds: int, section: str = "both", second_seeds: int | None = None):
    """-> [(run name, seed, TrainConfig)] in the order they run: seed by seed, so an early stop
    still leaves whole rows of every table. ``section``: the first report's grid, the second
    report's runs (``xpnet.tools.report2``), or both; ``second_seeds``: the second's seeds where
    fewer (--quick)."""
    second_seeds = seeds if second_seeds is None else second_seeds
    from xpnet.training.config import TrainConfig

    shared, per_optimizer = RECIPES[recipe]
    out = []
    for seed in range(seeds):
        if section in ("both", "first"):
            for name, fields in RUNS.items():
                values = {**shared, **per_optimizer.get(fields["optimizer"], {}), **fields, **overrides, "seed": seed}
                out.append((name, seed, TrainConfig(**values)))
        if section in ("both", "second") and seed < second_seeds:
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
