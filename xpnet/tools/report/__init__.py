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
import sys
import time
from pathlib import Path

from xpnet import backend
from xpnet.cli.argtypes import (OneLineParser, epoch_count, nonneg_float, nonneg_int, positive_float, positive_int,
                                probability)
from xpnet.errors import XpnetError
from xpnet.tools import report2
from xpnet.tools.report.efficiency import efficiency_table
from xpnet.tools.report.figures import ablation_figure, figures, loss_figure, smooth
from xpnet.tools.report.grid import (ABLATION_ROWS, ACCURACY_ROWS, PASS_THROUGH, PUBLISHED, QUICK, RECIPES, RUNS,
                                     SECTIONS, TWINS, ReportError, run_configs, train_run)
from xpnet.tools.report.tables import markdown, mean_sd, pct, run_stat, seconds, tables
from xpnet.training.config import epochs_text
from xpnet.training.rundir import RunFolder

__all__ = ["ABLATION_ROWS", "ACCURACY_ROWS", "PUBLISHED", "RUNS", "TWINS", "ReportError", "ablation_figure",
           "build_parser", "loss_figure", "main", "markdown", "mean_sd", "pct", "run", "run_configs", "tables"]

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
    g.add_argument("--epochs", type=epoch_count)
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
    return (f"{'--quick, ' if quick else ''}recipe `{recipe}` ({width}, {epochs_text(cfg.epochs)} epoch(s), "
            f"batch {cfg.batch_size}, {subset}, {test}), {seeds} seed(s) per run.")


@dataclasses.dataclass
class _Plan:
    """What the command line asks for, with --quick's values where no flag gives one."""

    seeds: int
    second_seeds: int
    test_subset: int
    eff_steps: int
    eff_batches: int
    grid: list
    first: bool
    wait_policy: str | None = None


def _plan(args) -> _Plan:
    quick = QUICK if args.quick else {}
    overrides = {k: v for k, v in quick.items() if k in PASS_THROUGH}
    overrides.update({k: getattr(args, k) for k in PASS_THROUGH if getattr(args, k) is not None})
    seeds = args.seeds or quick.get("seeds", 3)
    # --quick trains the second report's five runs for one seed: its network convolves at full
    # resolution, which no width makes cheap, and two seeds doubled the quick report's time.
    second_seeds = 1 if args.quick and args.section == "both" and not args.seeds else seeds
    plan = _Plan(
        seeds=seeds,
        second_seeds=second_seeds,
        test_subset=args.test_subset if args.test_subset is not None else quick.get("test_subset", 0),
        eff_steps=args.efficiency_steps if args.efficiency_steps is not None else quick.get("efficiency_steps", 50),
        eff_batches=args.efficiency_eval_batches or quick.get("efficiency_eval_batches", 5),
        grid=run_configs(args.recipe, overrides, seeds, args.section, second_seeds),
        first=args.section in ("both", "first"),
    )
    if any(cfg.framework == "torch" for _, _, cfg in plan.grid):
        from xpnet.tools.machine import passive_omp_wait

        plan.wait_policy = passive_omp_wait()  # before torch starts its OpenMP threads
        try:
            import xpnet.reference  # noqa: F401
        except ImportError as e:
            raise ReportError(str(e)) from e
    return plan


def _load(args, comm, plan):
    """-> (the data the runs see, test images cut to --test-subset; the whole data set)."""
    from xpnet.data import MNIST
    from xpnet.data.folder import DataFolder

    # A --data-dir that does not exist is refused, not created and downloaded into.
    data = full = comm.root_first(DataFolder.choose(args.data_dir).load, sys.stderr.isatty())
    if plan.test_subset:
        if plan.test_subset > len(data.test_labels):
            raise ReportError(f"--test-subset {plan.test_subset} exceeds the {len(data.test_labels)} test images")
        data = MNIST(data.train_images, data.train_labels, data.test_images[: plan.test_subset],
                     data.test_labels[: plan.test_subset])
    if plan.grid[0][2].train_subset > len(data.train_labels):
        raise ReportError(f"--train-subset {plan.grid[0][2].train_subset} exceeds the {len(data.train_labels)} "
                          "training images")
    return data, full


def _train_grid(mine, out, data, plan, args, log) -> None:
    """Train this rank's runs of the grid, each skipped when finished, resumed when interrupted."""
    from xpnet.training.config import TrainingError

    spent, trained = 0.0, 0
    for i, (name, seed, cfg) in enumerate(mine):
        folder = out / f"{name}-seed{seed}"
        eta = f", about {seconds(spent / trained * (len(mine) - i))} left" if trained else ""
        log(f"[{i + 1}/{len(mine)}] {name}, seed {seed}{eta}")
        t0 = time.perf_counter()
        already = RunFolder(folder).finished(cfg.epochs) is not None and (folder / "run.json").exists()
        try:
            train_run(folder, cfg, data, plan.test_subset, plots=not (args.no_plots or args.quick),
                      log=lambda s: log("  " + s))
        except TrainingError as e:
            raise ReportError(f"{folder}: {e}") from e
        if already:
            log("  finished before: skipped")
        else:
            spent += time.perf_counter() - t0
            trained += 1


def _sections(args, plan, results, data, full, log):
    """-> (the first report's efficiency table or None, the second report's section or None)."""
    eff = second = None
    if plan.eff_steps and plan.first:
        cfg0 = plan.grid[0][2]
        job = dataclasses.replace(cfg0, width=args.efficiency_width or cfg0.width, train_subset=0)
        eff = efficiency_table(job, full, plan.eff_steps, plan.eff_batches, PUBLISHED["epochs"], log)
    if args.section in ("both", "second"):
        job = report2.efficiency_job(plan.grid)
        job = dataclasses.replace(job, width=args.efficiency_width or job.width)
        second = dict(
            settings=dict(
                scale=report2.scale(plan.grid, len(data.train_labels), plan.test_subset, plan.second_seeds),
                recipe=", ".join(f"{k} {v}" for k, v in report2.recipes()[args.recipe].items()),
            ),
            tables=report2.tables(results, lambda name, field: run_stat(results, name, field)),
            efficiency=efficiency_table(job, full, plan.eff_steps, plan.eff_batches, report2.PUBLISHED["epochs"], log)
            if plan.eff_steps else None,
        )
    return eff, second


def _assemble(args, plan, results, data, eff, second) -> dict:
    """report.json's contents."""
    device = "gpu" if args.backend == "cupy" else "cpu"
    measured = {f"{name.split('-')[0]}-{device}": mean_sd([h["seconds"] for h in results[name].values()])
                for name in ("xpnet-sgd", "torch-sgd") if results.get(name)}
    cfg0 = plan.grid[0][2]
    return dict(
        settings=dict(
            recipe=args.recipe, quick=args.quick, seeds=plan.seeds, test_subset=plan.test_subset,
            backend=args.backend, command="xpnet report " + " ".join(args.argv), machine=_machine(),
            omp_wait_policy=plan.wait_policy, when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            scale=_scale(args.recipe, cfg0, plan.seeds, plan.test_subset, len(data.train_labels), args.quick),
            run_scale=f"{'full width' if cfg0.width == 1.0 else f'width {cfg0.width:g}'}, "
                      f"{epochs_text(cfg0.epochs)} epoch(s)"
                      f"{f', {cfg0.train_subset:,} images' if cfg0.train_subset else ''}",
            configs={f"{n}-seed{s}": dataclasses.asdict(c) for n, s, c in plan.grid},
        ),
        published=PUBLISHED,
        runs={n: {str(s): {k: v for k, v in h.items() if k != "losses"} for s, h in r.items()}
              for n, r in results.items()},
        tables=tables(results) if plan.first else None,
        efficiency=eff,
        measured_seconds=measured,
        second=second,
    )


def _write(out, report, results, data, args, log) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    written = [out / "report.md", out / "report.json"]
    if not args.no_plots:
        if report["tables"] is not None:
            written += figures(out, results, report["tables"])
        second = report["second"]
        if second:
            folder = out / f"{report2.MAIN}-seed0"
            cases = report2.failure_cases(folder, data) if report2.MAIN in results else None
            written += report2.figures(out, results, second, cases, smooth)
    log("written: " + ", ".join(str(p) if i == 0 else p.name for i, p in enumerate(written)))


def run(args, log=print, comm=None) -> dict | None:
    """The grid, then the report. Under ``mpiexec -n K`` (``comm``: an ``xpnet.distributed``
    communicator) each rank trains every K-th run of the grid, each run in one process; rank 0
    then times the efficiency rows and writes the report (and returns it; the others None)."""
    from xpnet import distributed

    comm = distributed.Solo() if comm is None else comm
    plan = _plan(args)
    backend.use(args.backend)
    data, full = _load(args, comm, plan)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    mine = plan.grid[comm.rank :: comm.size]
    if comm.size > 1:
        # Runs are independent: each rank takes every size-th one, trained in one process.
        def log(line, say=log):
            say(f"[rank {comm.rank}] {line}")
    log(f"report: {len(plan.grid)} runs ({plan.seeds} seed(s)) into {out}"
        + (f"; {len(mine)} of them on this rank" if comm.size > 1 else ""))
    _train_grid(mine, out, data, plan, args, log)
    comm.barrier()
    if not comm.is_root:
        return None
    results = {}
    for name, seed, _ in plan.grid:
        results.setdefault(name, {})[seed] = RunFolder(out / f"{name}-seed{seed}").history()
    eff, second = _sections(args, plan, results, data, full, log)
    report = _assemble(args, plan, results, data, eff, second)
    _write(out, report, results, data, args, log)
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
