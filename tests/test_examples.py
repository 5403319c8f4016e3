"""The scripts in examples/ run as a reader would run them, and use only the library's lower floors."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from _digits import digit_folder

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# What a library user builds on: these floors keep their names while the application layer moves.
PUBLIC = {"xpnet", "xpnet.backend", "xpnet.data", "xpnet.nn", "xpnet.optim", "xpnet.models"}


def test_train_mnist_learns_the_synthetic_digits(tmp_path):
    folder = digit_folder(tmp_path / "idx", 512, 200)
    out = subprocess.run(
        [sys.executable, EXAMPLES / "train_mnist.py", "--data-dir", folder, "--width", "0.125",
         "--epochs", "2", "--batch-size", "32"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    accuracies = [float(a) for a in re.findall(r"^epoch \d/2: .*test accuracy ([\d.]+)%$", out.stdout, re.M)]
    assert len(accuracies) == 2
    # Ten classes: chance is 10 %; the bars are learnt within two epochs of 16 steps.
    assert accuracies[-1] > 50.0, out.stdout


def test_examples_import_only_the_public_floors():
    for script in EXAMPLES.glob("*.py"):
        tree = ast.parse(script.read_text())
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        used = {m for m in names if m.split(".")[0] == "xpnet"}
        assert used and used <= PUBLIC, f"{script.name}: {sorted(used - PUBLIC)}"
