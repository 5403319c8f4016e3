"""``xpnet report``: the grid end to end at --quick scale, its tables against the run folders,
skipping and exact resume on a second call, and bad input as one line.

Runs on the real MNIST when XPNET_DATA points at it (CI does), else on a synthetic IDX set.
"""

import json
import os
import signal
import sys
from pathlib import Path

import numpy
import pytest

from _digits import digit_folder
from _support import run_without_torch

from xpnet import checkpoint
from xpnet.tools import report, report2
from xpnet.tools.report import ABLATION_ROWS, PUBLISHED, RUNS, main

ALL_RUNS = {**RUNS, **report2.RUNS}

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    real = os.environ.get("XPNET_DATA")
    if real and Path(real, "t10k-labels-idx1-ubyte.gz").exists():
        return Path(real)
    return digit_folder(tmp_path_factory.mktemp("idx"), 320, 500)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def quick(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("report")
    assert main(["--quick", "--data-dir", str(data_dir), "--out", str(out)]) == 0
    return out


def test_quick_report_writes_tables_json_and_figures(quick):
    md = (quick / "report.md").read_text()
    for heading in ("4.1.1 Comparison", "4.1.2 Ablation", "4.2 Efficiency"):
        assert heading in md
    for figure in ("99.67", "99.38", "99.46", "99.21", "99.65", "99.43", "99.19", "99.20", "48,994.08 s", "1,508.85 s",
                   "203.93 s"):
        assert figure in md, figure
    for label, arch, _, key in ABLATION_ROWS:
        assert f"| {label} | {arch} | {PUBLISHED['ablation'][key]:.2f} | " in md
    assert "projected" in md and "not measured" in md  # no GPU here or in CI
    for name in ("losses.png", "ablation.png"):
        assert (quick / name).read_bytes()[:8] == PNG, name
    rep = json.loads((quick / "report.json").read_text())
    assert rep["settings"]["seeds"] == 2 and rep["settings"]["quick"]
    assert set(rep["runs"]) == set(ALL_RUNS)
    # Every table cell is the mean and spread of the run folders' own results.
    for row in rep["tables"]["ablation"] + rep["tables"]["accuracy"]:
        accs = [json.loads((quick / f"{row['run']}-seed{s}" / "summary.json").read_text())["test_accuracy"]
                for s in (0, 1)]
        assert row["test"]["values"] == accs
        assert row["test"]["mean"] == pytest.approx(numpy.mean(accs))
        assert row["test"]["sd"] == pytest.approx(numpy.std(accs, ddof=1))
        assert f"{100 * numpy.mean(accs):.2f} ± {100 * numpy.std(accs, ddof=1):.2f}" in md
    for name in RUNS:
        folder = quick / f"{name}-seed1"
        for f in ("metrics.csv", "summary.json", "losses.csv", "last.safetensors", "run.json"):
            assert (folder / f).exists(), folder / f
        _, meta = checkpoint.load(folder / "last.safetensors")
        assert meta["config"]["framework"] == RUNS[name]["framework"]
        assert meta["config"]["seed"] == 1 and meta["config"]["batch_size"] == 8 and meta["config"]["lr"] == 1e-3
    for w in rep["tables"]["twins"]:
        a = [rep["runs"][w["xpnet"]][s]["test_accuracy"] - rep["runs"][w["torch"]][s]["test_accuracy"]
             for s in ("0", "1")]
        assert w["gap"]["values"] == pytest.approx(a)
    rows = rep["efficiency"]["rows"]
    assert rows["xpnet-cpu"]["measured"] and rows["torch-cpu"]["measured"]
    assert rows["xpnet-cpu"]["projected_seconds"] == pytest.approx(
        8 * (rows["xpnet-cpu"]["step_seconds"] * rep["efficiency"]["train_steps_per_epoch"]
             + rows["xpnet-cpu"]["eval_batch_seconds"] * rep["efficiency"]["eval_batches_per_epoch"]))


def test_quick_report_has_the_second_reports_section(quick):
    md = (quick / "report.md").read_text()
    section = md[md.index("## The second report"):]
    assert "| xpnet, dropout 0.9 | 99.55 |" in section and "| PyTorch twin, dropout 0.9 | 99.55 |" in section
    # --quick trains the second report's runs for one seed.
    assert "**Scale: 1 epoch(s) of the first 256 training images (4 steps of batch 64)" in section
    assert "1 seed(s) per run" in section
    rep = json.loads((quick / "report.json").read_text())
    second = rep["second"]
    # Every cell is the run folder's own result.
    for row in second["tables"]["sweep"] + second["tables"]["accuracy"]:
        acc = json.loads((quick / f"{row['run']}-seed0" / "summary.json").read_text())["test_accuracy"]
        assert row["test"]["values"] == [acc] and f"| {100 * acc:.2f} |" in section
    assert not (quick / f"{report2.MAIN}-seed1").exists()
    assert [r["dropout"] for r in second["tables"]["sweep"]] == [0.5, 0.7, 0.9, 0.99]
    for p in (0.5, 0.7, 0.9, 0.99):
        assert f"| {p:g} | " in section
    for name, fields in report2.RUNS.items():
        _, meta = checkpoint.load(quick / f"{name}-seed0" / "last.safetensors")
        cfg = meta["config"]
        assert meta["model_config"] == dict(arch="report2", width=0.125, dropout=fields["dropout"], ties="share",
                                            init="report", image_size=[28, 28])
        assert (cfg["framework"], cfg["lr"], cfg["batch_size"], cfg["inputs"], cfg["momentum"]) == (
            fields["framework"], 6.4e-3, 64, "raw", 0.0)
    eff = second["efficiency"]
    row = eff["rows"]["xpnet-cpu"]
    assert eff["epochs"] == 200 and "batch 64" in eff["job"]
    assert row["projected_seconds"] == pytest.approx(
        200 * (row["step_seconds"] * eff["train_steps_per_epoch"]
               + row["eval_batch_seconds"] * eff["eval_batches_per_epoch"]))
    assert "**Projected** time of the report's 200 epochs" in section
    for name in ("report2_dropout.png", "report2_losses.png", "report2_failures.png"):
        assert (quick / name).read_bytes()[:8] == PNG, name


def test_the_second_report_alone(capsys, data_dir, tmp_path):
    flags = ["--quick", "--section", "second", "--seeds", 1, "--efficiency-steps", 0, "--no-plots"]
    code, out, _ = _run(capsys, *flags, "--data-dir", data_dir, "--out", tmp_path)
    assert code == 0 and f"report: {len(report2.RUNS)} runs" in out
    md = (tmp_path / "report.md").read_text()
    assert "## The second report" in md and "4.1.1" not in md and "Projected" not in md
    rep = json.loads((tmp_path / "report.json").read_text())
    assert set(rep["runs"]) == set(report2.RUNS) and rep["tables"] is None


def test_a_second_call_skips_finished_runs(capsys, quick, data_dir):
    before = {p: p.stat().st_mtime_ns for p in quick.glob("*/last.safetensors")}
    code, out, _ = _run(capsys, "--quick", "--data-dir", data_dir, "--out", quick, "--efficiency-steps", 0,
                        "--no-plots")
    assert code == 0
    assert out.count("finished before: skipped") == 2 * len(RUNS) + len(report2.RUNS)
    assert {p: p.stat().st_mtime_ns for p in quick.glob("*/last.safetensors")} == before


def test_ctrl_c_stops_cleanly_and_the_next_call_resumes_exactly(capsys, monkeypatch, quick, data_dir, tmp_path):
    import xpnet.training.runner as train_mod

    real_step = train_mod.XpnetRunner.step
    calls = {"n": 0}

    def interrupted_step(self, lr):
        calls["n"] += 1
        if calls["n"] == 5:  # Ctrl-C in the middle of the first run
            os.kill(os.getpid(), signal.SIGINT)
        real_step(self, lr)

    monkeypatch.setattr(train_mod.XpnetRunner, "step", interrupted_step)
    flags = ["--quick", "--seeds", 1, "--data-dir", data_dir, "--out", tmp_path, "--efficiency-steps", 0, "--no-plots"]
    code, _, err = _run(capsys, *flags)
    assert code == 130
    assert err.strip().splitlines() == ["xpnet report: interrupted; run the same command again to resume"]
    _, meta = checkpoint.load(tmp_path / "xpnet-sgd-seed0" / "last.safetensors")
    assert (meta["epoch"], meta["batch"]) == (0, 5)
    monkeypatch.setattr(train_mod.XpnetRunner, "step", real_step)
    code, out, _ = _run(capsys, *flags)
    assert code == 0 and "resuming" in out
    # The resumed run ends where the uninterrupted one of the quick report ended.
    a, _ = checkpoint.load(quick / "xpnet-sgd-seed0" / "last.safetensors")
    b, _ = checkpoint.load(tmp_path / "xpnet-sgd-seed0" / "last.safetensors")
    for k in a:
        numpy.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert (tmp_path / "report.md").exists()


def test_a_folder_with_other_settings_is_refused_and_kept(capsys, quick, data_dir):
    before = (quick / "xpnet-sgd-seed0" / "last.safetensors").read_bytes()
    code, _, err = _run(capsys, "--quick", "--lr", "0.5", "--data-dir", data_dir, "--out", quick)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "other settings" in err
    assert (quick / "xpnet-sgd-seed0" / "last.safetensors").read_bytes() == before


@pytest.mark.parametrize("flags", [["--seeds", "0"], ["--recipe", "nope"], ["--width", "-1"], ["--test-subset", "x"]])
def test_bad_flags_are_usage_errors(flags, tmp_path):
    with pytest.raises(SystemExit) as e:
        main([*flags, "--out", str(tmp_path / "r")])
    assert e.value.code == 2
    assert not (tmp_path / "r").exists()


def test_a_too_large_subset_is_one_line(capsys, data_dir, tmp_path):
    code, _, err = _run(capsys, "--quick", "--test-subset", 10**6, "--data-dir", data_dir, "--out", tmp_path)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "--test-subset" in err


def test_recipes_and_pass_through_flags():
    grid = report.run_configs("paper", {"width": 0.5, "dropout": 0.1}, seeds=2)
    assert len(grid) == 2 * len(ALL_RUNS)
    by = {(n, s): c for n, s, c in grid}
    sgd, adam = by["xpnet-sgd", 1], by["torch-adam", 0]
    assert (sgd.epochs, sgd.batch_size, sgd.lr, sgd.momentum, sgd.schedule, sgd.augment, sgd.label_smoothing) == (
        8, 8, 1e-3, 0.0, "constant", 0, 0.0)
    assert sgd.width == adam.width == 0.5 and sgd.seed == 1
    assert (adam.framework, adam.optimizer) == ("torch", "adam")
    v3 = by["conv-shortcut-3-blocks", 0]
    assert (v3.shortcut, v3.res_blocks, v3.head, v3.optimizer) == ("conv", 3, "max", "sgd")
    # The second report's runs: its own recipe, the flags but not --dropout, which the sweep sets.
    r2 = by["report2-d0.7", 1]
    assert (r2.arch, r2.epochs, r2.batch_size, r2.lr, r2.momentum, r2.inputs, r2.pool_ties) == (
        "report2", 200, 64, 6.4e-3, 0.0, "raw", "share")
    assert r2.width == 0.5 and r2.dropout == 0.7 and by["report2-torch-d0.9", 0].framework == "torch"
    x = {n: c for n, s, c in report.run_configs("xpnet", {}, seeds=1)}
    assert x["xpnet-sgd"].lr == 0.1 and x["xpnet-adam"].lr == 1e-3 and x["xpnet-sgd"].schedule == "onecycle"
    assert (x["report2-d0.9"].arch, x["report2-d0.9"].schedule, x["report2-d0.9"].inputs, x["report2-d0.9"].init) == (
        "report2", "onecycle", "standard", "pytorch")
    assert len(report.run_configs("paper", {}, seeds=2, second_seeds=1)) == 2 * len(RUNS) + len(report2.RUNS)
    only = report.run_configs("paper", {}, seeds=1, section="second")
    assert [n for n, _, _ in only] == list(report2.RUNS)


def test_mean_sd_and_the_unmeasured_rows():
    s = report.mean_sd([0.99, 0.98, 0.97])
    assert s["mean"] == pytest.approx(0.98) and s["sd"] == pytest.approx(0.01)
    assert report.mean_sd([0.5])["sd"] is None
    assert report.pct(report.mean_sd([0.9912])) == "99.12"
    assert report.pct(report.mean_sd([0.99, 0.98, 0.97])) == "98.00 ± 1.00"


def test_the_xpnet_command_hands_report_on(capsys):
    from xpnet.cli import main as xpnet_main

    with pytest.raises(SystemExit) as e:
        xpnet_main(["report", "--help"])
    assert e.value.code == 0
    assert "--recipe" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        xpnet_main(["report", "--seeds", "0"])
    assert e.value.code == 2 and "--seeds" in capsys.readouterr().err


def test_mpiexec_deals_the_runs_out_to_the_ranks(tmp_path, data_dir):
    from test_distributed import MPIEXEC, _mpirun

    if MPIEXEC is None:
        pytest.skip("needs mpi4py and mpiexec: pip install 'xpnet[mpi]'")
    out = tmp_path / "r"
    args = ["--quick", "--seeds", "1", "--efficiency-steps", "0", "--no-plots", "--data-dir", data_dir, "--out", out]
    done = _mpirun(sys.executable, "-m", "xpnet", "report", *map(str, args), n=2, timeout=300)
    assert done.returncode == 0, done.stderr
    # Twelve runs (seven of the first report, five of the second): six on each rank, each
    # trained once, by one rank.
    assert "[rank 0] [6/6]" in done.stdout and "[rank 1] [6/6]" in done.stdout
    assert "[rank 0] [7/" not in done.stdout and "[rank 1] [7/" not in done.stdout
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["runs"]) == set(ALL_RUNS)
    for name in ALL_RUNS:
        summary = json.loads((out / f"{name}-seed0" / "summary.json").read_text())
        assert rep["runs"][name]["0"]["test_accuracy"] == summary["test_accuracy"]
    assert (out / "report.md").read_text().count("## 4.1.2 Ablation study") == 1


def test_without_torch_the_report_is_one_line_naming_the_extra(tmp_path, data_dir):
    out = run_without_torch(["report", "--quick", "--data-dir", data_dir, "--out", tmp_path / "r"])
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "xpnet[reference]" in lines[0], out.stderr
    assert not (tmp_path / "r").exists()


def test_report_figures_draw_one_colour_per_variant_and_the_data_inside_the_frame():
    from xpnet.tools import report as R

    rng = numpy.random.default_rng(0)
    results = {n: {s: {"losses": list(2.3 * numpy.exp(-numpy.arange(300) / 80) + rng.normal(0, 0.05, 300))}
                   for s in (0, 1)} for n in R.RUNS}
    fig = R.loss_figure(results)
    for ax in fig.axes:
        assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0
        lines = [ln for ln in ax.get_lines() if ln.get_label() and not ln.get_label().startswith("_")]
        for line in ax.get_lines():
            assert max(line.get_ydata()) <= ax.get_ylim()[1]
        labels = [ln.get_label() for ln in lines]
        assert len(labels) == len(set(labels))
    twin_ax = fig.axes[0]
    by_label = {ln.get_label(): ln for ln in twin_ax.get_lines() if not ln.get_label().startswith("_")}
    ours, twin = by_label["xpnet, SGD"], by_label["PyTorch twin, SGD (dashed)"]
    assert ours.get_color() == twin.get_color() and twin.get_linestyle() == "--" and ours.get_linestyle() == "-"
    variants = fig.axes[2]
    colours = [ln.get_color() for ln in variants.get_lines() if not ln.get_label().startswith("_")]
    assert len(colours) == 5 and len(set(colours)) == 5  # one colour per variant
    assert len(variants.get_lines()) == 10  # every seed drawn

    rows = [dict(label=label, architecture=arch, run=run, published=R.PUBLISHED["ablation"][key],
                 test=dict(mean=0.985 + 0.002 * i, sd=0.001, values=[]))
            for i, (label, arch, run, key) in enumerate(R.ABLATION_ROWS)]
    ax = R.ablation_figure(rows).axes[0]
    lo, hi = ax.get_ylim()
    published = [r["published"] for r in rows]
    assert lo < 98.5 - 0.1 and hi > max(published) and hi - lo < 3  # around the data, not from 0 or 9 %
    report_marks = [ln for ln in ax.get_lines() if ln.get_label() == "the report"][0]
    assert list(report_marks.get_ydata()) == published
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0].startswith("Baseline\nidentity shortcut") and "average pool" in ticks[1]
    assert "conv shortcut\n3 blocks" in ticks[3] and ticks[4].endswith("Adam")
