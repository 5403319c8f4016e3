"""summary.json says what produced a run: xpnet's version and git commit, the data and its
checksums, the backend, threads and CPU, the command line."""

import hashlib
import json
import os
import shutil
import subprocess

import pytest

from _digits import digit_folder

from xpnet import __version__
from xpnet.cli import main
from xpnet.tools.machine import cpu_info
from xpnet.tools.provenance import data_files, git_commit


def test_a_run_records_what_produced_it(tmp_path, capsys):
    data = digit_folder(tmp_path / "data", 128, 50)
    (data / "README.md").write_text("not data")
    argv = ["train", "--data-dir", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--width", "0.125",
            "--batch-size", "64", "--no-plots", "--seed", "3"]
    assert main(argv) == 0
    p = json.loads((tmp_path / "run" / "summary.json").read_text())["provenance"]
    assert p["xpnet_version"] == __version__
    assert p["command"] == "xpnet " + " ".join(argv)
    assert p["data_dir"] == str(data.resolve())
    assert sorted(p["data_files"]) == sorted(f.name for f in data.glob("*-idx*"))
    for name, digest in p["data_files"].items():
        assert digest == hashlib.sha256((data / name).read_bytes()).hexdigest()
    assert p["backend"] == "numpy" and p["threads"] >= 1
    assert p["cpu_model"] == cpu_info()["model"] and p["cpu_cores"] == cpu_info()["cores"]
    assert p["git_commit"] == git_commit()
    assert p["omp_wait_policy"] == os.environ.get("OMP_WAIT_POLICY")


@pytest.mark.skipif(shutil.which("git") is None, reason="no git")
def test_git_commit_of_a_clone_and_none_outside_one(tmp_path):
    assert git_commit(tmp_path) is None  # an installed copy: no repository around it
    env = dict(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    git = ["git", "-C", str(tmp_path), "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "f").write_text("1")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True, env={**env, "PATH": "/usr/bin:/bin"})
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "f").write_text("2")
    assert git_commit(tmp_path) == head + "-dirty"


def test_data_files_lists_the_idx_files_only(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"abc")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "t10k-labels-idx1-ubyte").mkdir()
    assert data_files(tmp_path) == {"train-images-idx3-ubyte.gz": hashlib.sha256(b"abc").hexdigest()}
