"""The scripts in benchmarks/tools that the figures of docs/ and benchmarks/ cite still run (tiny settings)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script, *args):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tools" / script), *args],
                          cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)


def test_ab_compares_a_tree_with_itself_under_other_constants():
    r = _run("ab.py", ".", '.@{"ELEMENTWISE_CHUNK_BYTES": 262144}', "--configs", "0.125:16", "--rounds", "1")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith("width 0.125 batch 16:") and "(1.000)" in line and line.count("img/s") == 2


def test_ab_times_a_tree_with_the_command_lines_allocator():
    r = _run("ab.py", ".", '.@{"allocator": true}', "--configs", "0.125:8", "--rounds", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1].count("img/s") == 2


def test_ab_names_a_tree_that_fails():
    r = _run("ab.py", ".", '.@{"NO_SUCH_CONSTANT": [', "--configs", "0.125:2", "--rounds", "1")
    assert r.returncode != 0 and "failed" in r.stderr


def test_thread_use_accounts_for_the_step():
    r = _run("thread_use.py", "--width", "0.125", "--batch", "4", "--steps", "2")
    assert r.returncode == 0, r.stderr
    assert "outside the chunk loops:" in r.stdout
    # Each timed row names the kernel function whose chunk loop it is: the fused block's are there.
    from xpnet.functional import fused

    named = {line.split()[0] for line in r.stdout.splitlines()[1:] if "calls/step" in line}
    assert named & {name for name in vars(fused) if callable(getattr(fused, name))}, r.stdout
