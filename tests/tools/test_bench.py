"""``xpnet bench`` in its smoke mode (the benchmark itself is a command, never a timed test)."""

import json

import pytest

from xpnet.tools.bench import conv_flops, main, markdown
from xpnet.tools.machine import blas_note, cpu_info, describe_cpu
from xpnet.models import ResNet9

pytest.importorskip("torch")
pytest.importorskip("threadpoolctl")


def test_flop_count_of_the_report_model():
    # 1.28 GFLOP per training image (forward + two backward GEMMs), the figure the issue quotes.
    fwd = conv_flops(ResNet9(rng=0))
    assert fwd == 426_761_216
    assert round(3 * fwd / 1e9, 2) == 1.28
    assert conv_flops(ResNet9(width=0.5, rng=0)) < fwd / 3.5


def test_report2_network_is_timed_on_its_preset_against_its_twin(tmp_path):
    from xpnet.models import Report2Net
    from xpnet.tools.bench import bench_config

    cfg = bench_config(1.0, 64, "torch", "report2")
    assert (cfg.arch, cfg.lr, cfg.momentum, cfg.dropout, cfg.pool_ties, cfg.framework) == \
        ("report2", 6.4e-3, 0.0, 0.9, "share", "torch")
    # 46 MFLOP per image forward, as the model's docstring says: six times ResNet-9 with its channel counts.
    assert round(conv_flops(Report2Net(rng=0)) / 1e6) == 46
    assert round(conv_flops(ResNet9(channels=(4, 16, 32, 64), rng=0)) / 1e5) == 77
    assert main(["--smoke", "--arch", "report2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    (row,) = result["rows"]
    assert result["arch"] == "report2" and row["train_ratio"] > 0 and row["xpnet_peak_mib"] >= 0
    assert "second report's network" in (tmp_path / "bench.md").read_text()
    assert main(["--arch", "report2", "--backend", "cupy", "--dry-run", "--out", str(tmp_path)]) == 2


def test_smoke_run_writes_json_and_markdown(tmp_path, capsys):
    assert main(["--smoke", "--no-memory", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    (row,) = result["rows"]
    assert row["batch"] == 2
    assert row["xpnet_train_ips"] > 0 and row["torch_train_ips"] > 0
    assert row["train_ratio"] == pytest.approx(row["xpnet_train_ips"] / row["torch_train_ips"])
    assert result["sgemm_peak_gflops"] > 0 and result["threads"] >= 1
    md = (tmp_path / "bench.md").read_text()
    assert md == markdown(result) and "| 2 |" in md
    assert "ratio" in capsys.readouterr().out
    # Every table names the CPU it was measured on, first.
    assert result["cpu"]["model"] and result["cpu"]["cores"] >= 1
    assert md.startswith(f"CPU: {describe_cpu(result['cpu'])}\n")
    # ... and the wait policy PyTorch's threads ran under (the tests set PASSIVE themselves).
    assert result["omp_wait_policy"] == "PASSIVE (OMP_WAIT_POLICY)"
    assert "PyTorch's OpenMP wait policy: PASSIVE (OMP_WAIT_POLICY)" in md


def _policy_in_fresh_python(code, **env):
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split("\n")[:2]


SHOW = ("import os\nfrom xpnet.tools.machine import passive_omp_wait\n{before}print(passive_omp_wait())\n"
        "print(os.environ['OMP_WAIT_POLICY'])")


def test_torch_sleeps_while_it_waits_unless_the_user_chose():
    assert _policy_in_fresh_python(SHOW.format(before="")) == ["PASSIVE (set by xpnet)", "PASSIVE"]
    given = _policy_in_fresh_python(SHOW.format(before=""), OMP_WAIT_POLICY="active")
    assert given == ["ACTIVE (OMP_WAIT_POLICY)", "active"]
    late = _policy_in_fresh_python(SHOW.format(before="import torch\n"))
    assert late[0].startswith("ACTIVE (torch was loaded before")
    # xpnet train --framework torch sets it before it imports the twin.
    code = "import os, sys\nfrom xpnet.cli.train import _need_framework\n_need_framework('torch')\n" \
           "print('torch' in sys.modules)\nprint(os.environ['OMP_WAIT_POLICY'])"
    assert _policy_in_fresh_python(code) == ["True", "PASSIVE"]


def test_a_warning_when_the_load_average_says_other_work_runs():
    from xpnet.tools.machine import load_note

    note = load_note(cores=2, load=8.8)
    assert "8.8 on 2 cores" in note and "\n" not in note
    assert load_note(cores=2, load=0.4) is None and load_note(cores=16, load=6.0) is None


def test_cpu_line_names_model_cores_flags_and_openblas_settings(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    cpu = cpu_info()
    assert cpu["openblas_env"]["OPENBLAS_CORETYPE"] == "Haswell"
    cpu = dict(model="AMD EPYC", cores=2, flags=["avx2", "avx512f"], openblas_env={"OPENBLAS_CORETYPE": "Haswell"})
    assert describe_cpu(cpu) == (
        "AMD EPYC, 2 cores, avx2 avx512f; OPENBLAS_CORETYPE=Haswell"
    )
    assert describe_cpu(dict(model="Intel Xeon", cores=4, flags=[], openblas_env={})) == "Intel Xeon, 4 cores"


def test_memory_probe_reports_a_number(tmp_path):
    assert main(["--smoke", "--out", str(tmp_path)]) == 0
    row = json.loads((tmp_path / "bench.json").read_text())["rows"][0]
    assert row["xpnet_peak_mib"] >= 0 and row["torch_peak_mib"] >= 0


def test_bad_arguments_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--batch-sizes", "0", "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == "xpnet bench: error: argument --batch-sizes: must be a positive integer, got 0 " \
        "(see xpnet bench --help)"


def test_profile_times_every_stage_of_both_frameworks(tmp_path):
    assert main(["--smoke", "--profile", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    (row,) = result["rows"]
    rows = row["profile"]
    stages = ["conv1", "conv2", "res1", "conv3", "conv4", "res2", "classifier"]
    assert [(s, p) for s, p, _ in rows[:-2]] == ([(s, "forward") for s in stages]
                                                 + [(s, "backward") for s in stages[::-1]])
    assert all(ms["xpnet"] > 0 for _, _, ms in rows[:-1])
    assert all(ms["torch"] > 0 for s, _, ms in rows[:-2] if s != "conv1")
    step = rows[-1][2]
    assert step["xpnet"] > sum(ms["xpnet"] for _, _, ms in rows[:-2])
    assert "| res1 | backward |" in (tmp_path / "bench.md").read_text()


def test_dry_run_counts_launches_and_syncs_without_a_gpu(tmp_path, capsys):
    from xpnet import backend

    assert main(["--backend", "cupy", "--dry-run", "--width", "0.0625", "--batch-sizes", "2", "4",
                 "--out", str(tmp_path)]) == 0
    assert backend.name() == "numpy"
    result = json.loads((tmp_path / "launches.json").read_text())
    small, large = result["rows"]
    for row in (small, large):
        train, torch_counts = row["xpnet"]["train"], row["torch"]
        assert train["syncs"] == 1 and train["to_device"] == 0 and train["float64"] == 0
        assert train["ops"] == sum(row["xpnet"]["train_by_name"].values()) - 1  # less the loss's float()
        assert 0 < torch_counts["train"] < torch_counts["train_leaf_ops"]
        assert torch_counts["train_by_name"]["aten::convolution_backward"] == 8  # one per 3x3 conv
    assert small["xpnet"]["train"]["ops"] == large["xpnet"]["train"]["ops"]
    assert "| 2 |" in capsys.readouterr().out
    assert main(["--dry-run", "--out", str(tmp_path)]) == 2


def test_timed_bench_runs_on_the_fake_device(tmp_path, fake_cupy):
    assert main(["--backend", "cupy", "--smoke", "--no-torch", "--no-memory", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["backend"] == "cupy" and result["rows"][0]["xpnet_train_ips"] > 0
    assert fake_cupy.syncs > 0  # the clock is read after synchronising the device


def test_a_note_when_openblas_is_pinned_below_the_cpu():
    avx512 = dict(model="AMD EPYC", cores=2, flags=["avx2", "avx512f"], openblas_env={"OPENBLAS_CORETYPE": "Haswell"})
    haswell = [dict(internal_api="openblas", architecture="Haswell")]
    note = blas_note(avx512, haswell)
    assert note and "Haswell kernels" in note and "unset OPENBLAS_CORETYPE" in note
    assert blas_note(avx512, [dict(internal_api="openblas", architecture="SkylakeX")]) is None
    assert blas_note(dict(avx512, openblas_env={}), haswell) is None  # OpenBLAS chose them itself
    assert blas_note(dict(avx512, flags=["avx2"]), haswell) is None  # nothing newer to run
