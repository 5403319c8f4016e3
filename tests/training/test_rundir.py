"""xpnet.training.rundir: which folders hold a run, what a resume may change."""

import os
from pathlib import Path

import pytest

from xpnet.training import rundir as runs
from xpnet.training.rundir import RunError


def test_fresh_folder_and_holds_run(tmp_path):
    assert runs.fresh_folder(tmp_path) == tmp_path / "run-1"
    (tmp_path / "run-1").mkdir()
    (tmp_path / "run-2").mkdir()
    assert runs.fresh_folder(tmp_path) == tmp_path / "run-3"
    assert not runs.holds_run(tmp_path / "run-1")
    (tmp_path / "run-1" / "notes.txt").write_text("mine")
    assert not runs.holds_run(tmp_path / "run-1")
    (tmp_path / "run-1" / "summary.json").write_text("{}")
    assert runs.holds_run(tmp_path / "run-1")


def test_check_out_and_clear(tmp_path):
    runs.check_out(tmp_path / "new")
    for name in ("last.safetensors", "best.safetensors", "metrics.csv", "curves.png"):
        (tmp_path / name).write_text(name)
    with pytest.raises(RunError, match="holds another run"):
        runs.check_out(tmp_path)
    runs.check_out(tmp_path, resume=tmp_path / "last.safetensors")
    with pytest.raises(RunError, match="later last.safetensors"):
        runs.check_out(tmp_path, resume=tmp_path / "best.safetensors")
    runs.check_out(tmp_path, resume=tmp_path / "best.safetensors", overwrite=True)
    (tmp_path / "notes.txt").write_text("mine")
    runs.clear(tmp_path, keep=tmp_path / "best.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.safetensors", "notes.txt"]


def test_conflicts_name_each_changed_flag():
    stored = dict(width=0.25, batch_size=128, seed=0)
    assert runs.conflicts(stored, dict(width=0.25, seed=0)) is None
    line = runs.conflicts(stored, dict(width=0.5, batch_size=128, seed=3))
    assert line.startswith("--width 0.5, --seed 3 would change") and "(width 0.25, seed 0)" in line
    assert "\n" not in line and "--epochs" in line


def test_new_epochs():
    # A finished 4-epoch one-cycle run of 10 steps per epoch.
    config = dict(epochs=4, schedule="onecycle", lr=0.1, batch_size=128)
    meta = dict(config=config, epoch=4, step=40)
    runs.check_new_epochs(meta, 4, 10)
    with pytest.raises(RunError, match=r"from 4e-07 to 0.038.*start a new run with --epochs 6"):
        runs.check_new_epochs(meta, 6, 10)
    with pytest.raises(RunError, match="fewer than the 4 epochs"):
        runs.check_new_epochs(meta, 3, 10)
    for schedule in ("cosine", "step"):
        with pytest.raises(RunError, match=schedule):
            runs.check_new_epochs({**meta, "config": {**config, "schedule": schedule}}, 6, 10)
    runs.check_new_epochs({**meta, "config": {**config, "schedule": "constant"}}, 9, 10)


def test_new_epochs_may_be_real():
    # A one-cycle run of 1.3 epochs of 10 steps (13 steps), interrupted at epoch 2, batch 2.
    config = dict(epochs=1.3, schedule="onecycle", lr=0.1, batch_size=128)
    meta = dict(config=config, epoch=1, batch=2, step=12)
    runs.check_new_epochs(meta, 1.3, 10)
    with pytest.raises(RunError, match=r"^--epochs 1.5: this run's onecycle .* over its 1.3 epochs.*--epochs 1.5$"):
        runs.check_new_epochs(meta, 1.5, 10)
    constant = {**meta, "config": {**config, "schedule": "constant"}}
    runs.check_new_epochs(constant, 2.5, 10)
    runs.check_new_epochs(constant, 1.2, 10)  # 12 steps: the batches done, no more
    with pytest.raises(RunError, match=r"^--epochs 1.1 is fewer than the 1.2 epochs this run has done$"):
        runs.check_new_epochs(constant, 1.1, 10)
    with pytest.raises(RunError, match=r"^--epochs 0.5 is fewer than the 1.2 epochs"):
        runs.check_new_epochs(constant, 0.5, 10)
    # Finished: its second epoch ended after 3 of 10 batches, its shuffle spent; no going on.
    ended = {**constant, "epoch": 2, "batch": 0, "step": 13}
    runs.check_new_epochs(ended, 1.3, 10)
    with pytest.raises(RunError, match=r"^--epochs 3: this run ended inside epoch 2, after 3 of its batches"):
        runs.check_new_epochs(ended, 3, 10)
    with pytest.raises(RunError, match=r"^--epochs 1.2 is fewer than the 1.3 epochs"):
        runs.check_new_epochs(ended, 1.2, 10)


def test_a_held_folder_is_refused_naming_the_holder_and_free_again_after_release(tmp_path):
    lock = runs.claim(tmp_path / "r")
    with pytest.raises(runs.RunError, match=f"in use by another xpnet run \\(process {os.getpid()}\\)"):
        runs.claim(tmp_path / "r")
    lock.release()
    assert not (tmp_path / "r").exists()  # made by the claim, left empty: gone again
    runs.claim(tmp_path / "r").release()


def test_fresh_claims_get_different_folders_and_keep_what_a_run_wrote(tmp_path):
    a, b = runs.claim(root=tmp_path), runs.claim(root=tmp_path)
    assert (a.folder.name, b.folder.name) == ("run-1", "run-2")
    (a.folder / "metrics.csv").write_text("epoch\n")
    a.release(), b.release()
    assert sorted(os.listdir(a.folder)) == ["metrics.csv"] and not b.folder.exists()


@pytest.mark.parametrize("kind", ["a file", "under a file", "/dev/null", "/proc/self"])
def test_an_out_that_cannot_be_a_run_folder_is_one_line(tmp_path, kind):
    f = tmp_path / "f"
    f.write_text("x")
    out = {"a file": f, "under a file": f / "sub", "/dev/null": Path("/dev/null"),
           "/proc/self": Path("/proc/self")}[kind]
    with pytest.raises(runs.RunError, match=str(out)) as e:
        runs.claim(out)
    assert "\n" not in str(e.value) and f.read_text() == "x"
