"""The report's tables as numbers (mean and spread over seeds, the published figure beside) and
as Markdown, in the report's layout."""

from __future__ import annotations

import statistics

from xpnet.tools import report2
from xpnet.tools.report.grid import ABLATION_ROWS, ACCURACY_ROWS, PUBLISHED, TWINS


def mean_sd(values) -> dict:
    values = [float(v) for v in values]
    sd = statistics.stdev(values) if len(values) > 1 else None
    return dict(mean=statistics.fmean(values), sd=sd, n=len(values), values=values)


def pct(stat) -> str:
    if stat is None:
        return "not run"
    if stat["sd"] is None:
        return f"{100 * stat['mean']:.2f}"
    return f"{100 * stat['mean']:.2f} ± {100 * stat['sd']:.2f}"


def seconds(s) -> str:
    return f"{s:,.0f} s" if s >= 100 else f"{s:,.1f} s"


def run_stat(results: dict, name: str, field: str):
    """Mean ± sd of ``field`` over the seeds of run ``name`` (None where it was not run)."""
    runs = results.get(name, {})
    return mean_sd([r[field] for r in runs.values()]) if runs else None


def tables(results: dict) -> dict:
    """Per-run results {name: {seed: history}} -> the three tables' rows as numbers."""

    def stat(name, field):
        return run_stat(results, name, field)

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
        lines += report2.markdown(report["second"], pct, seconds)
    return "\n".join(lines)


def _first_report(report: dict) -> list[str]:
    """The first report's three tables and its figures' captions."""
    return (_accuracy_table(report["tables"]) + _ablation_table(report["tables"])
            + _efficiency_rows(report) + _FIGURES)


def _accuracy_table(t: dict) -> list[str]:
    lines = [
        "## 4.1.1 Comparison with the official implementation",
        "",
        "| | Training Set Acc. (report) | Training Set Acc. (ours) | Test-set Acc. (report) | Test-set Acc. (ours) |",
        "| :----: | :----: | :----: | :----: | :----: |",
    ]
    for r in t["accuracy"]:
        lines.append(f"| {r['label']} | {r['published']['train']:.2f} | {pct(r['train'])} | "
                     f"{r['published']['test']:.2f} | {pct(r['test'])} |")
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
    return lines


def _ablation_table(t: dict) -> list[str]:
    lines = []
    lines += [
        "",
        "## 4.1.2 Ablation study",
        "",
        "| | Network Architecture (Optimizer) | Test-set Acc. (report) | Test-set Acc. (ours) |",
        "| :----: | :----: | :----: | :----: |",
    ]
    for r in t["ablation"]:
        lines.append(f"| {r['label']} | {r['architecture']} | {r['published']:.2f} | {pct(r['test'])} |")
    return lines


def _efficiency_rows(report: dict) -> list[str]:
    s, eff = report["settings"], report["efficiency"]
    lines = []
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
            cells.append(seconds(row["projected_seconds"]) if row and row["measured"] else "not measured")
        lines.append(f"| Ours: {eff['epochs']} epochs, **projected** | " + " | ".join(cells) + " |")
    measured = report.get("measured_seconds", {})
    if measured:
        cells = [measured.get(k) for k in ("xpnet-cpu", "xpnet-gpu", "torch-cpu", "torch-gpu")]
        lines.append(f"| Ours: one run of this grid ({s['run_scale']}), measured | "
                     + " | ".join("-" if c is None else f"{seconds(c['mean'])} (n = {c['n']})" for c in cells) + " |")
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
    return lines


_FIGURES = [
    "",
    "## Figures",
    "",
    "- `losses.png`: the training loss of every run (a moving average over steps); each xpnet run "
    "and its PyTorch twin overlaid.",
    "- `ablation.png`: the ablation's test accuracy, mean ± standard deviation, the report's figures as markers.",
    "",
]
