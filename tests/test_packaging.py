"""What `pip install xpnet` gives, checked in fresh virtual environments built from the registry.

One environment serves every check, in two stages: first NumPy and xpnet alone (`--no-deps`), where
the array core must import and the command must name what it lacks in one line; then a plain
`pip install .` of the same source, as the README says (no extras), which must bring everything the
`xpnet` command uses: `--version`, a tiny train, evaluate, predict (a blank image: 'no digit') and
`bench --smoke --no-torch` all work, and the kernels run on the cores threadpoolctl reports. Needs
the package registry (CI has it), so it is marked `venv`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _digits import digit_folder

pytestmark = pytest.mark.venv

REPO = Path(__file__).resolve().parents[1]
PIP_QUIET = ["-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check"]


def _run(cmd, **kwargs):
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                         timeout=600, **kwargs)
    return out


def _ok(cmd, **kwargs):
    out = _run(cmd, **kwargs)
    assert out.returncode == 0, (f"{' '.join(map(str, cmd))} -> {out.returncode}\n"
                                 f"{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """(python, bin folder, work folder) of a venv holding NumPy and the xpnet wheel, no more."""
    work = tmp_path_factory.mktemp("venv")
    # Build from a copy of what the package is made of, so the checkout gains no build/ folder.
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "xpnet", src / "xpnet", ignore=shutil.ignore_patterns("__pycache__"))
    _ok([sys.executable, "-m", "venv", work / "v"])
    python = work / "v" / "bin" / "python"
    _ok([python, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check", "-w", work / "wheel", src])
    (wheel,) = (work / "wheel").glob("xpnet-*.whl")
    _ok([python, *PIP_QUIET, "numpy", "--no-deps", wheel])
    return python, python.parent, work, wheel


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XPNET_", "OMP_", "OPENBLAS_", "MKL_", "PYTHON"))}
    env.update(extra)
    return env


def test_the_core_imports_with_numpy_alone_and_the_command_says_what_it_lacks(env):
    python, bin_dir, work, _ = env
    code = ("import importlib.util as u, sys\n"
            "assert u.find_spec('tqdm') is None and u.find_spec('threadpoolctl') is None, 'not a bare venv'\n"
            "import xpnet.backend, xpnet.functional, xpnet.nn, xpnet.models\n"
            "from xpnet.models import ResNet9\n"
            "import numpy\n"
            "net = ResNet9(width=0.125, rng=0)\n"
            "print(net(numpy.zeros((2, 1, 28, 28), numpy.float32)).shape)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tqdm', 'pooch', 'PIL', 'matplotlib', 'threadpoolctl', 'safetensors', 'torch')))\n")
    out = _ok([python, "-c", code], cwd=work, env=_clean_env())
    assert out.stdout.split("\n")[:2] == ["(2, 10)", "[]"]
    out = _run([bin_dir / "xpnet", "train", "--out", work / "never"], cwd=work, env=_clean_env())
    assert out.returncode == 1 and not (work / "never").exists()
    line = out.stderr.strip()
    assert "\n" not in line and "pip install xpnet" in line and "threadpoolctl" in line and "matplotlib" in line


def test_a_plain_install_runs_every_command(env):
    python, bin_dir, work, wheel = env
    # The README's `pip install .` from a clone (here a copy of it): no extras, the dependencies alone.
    _ok([python, *PIP_QUIET, "."], cwd=work / "src", env=_clean_env())
    assert "xpnet" in _ok([python, "-m", "pip", "show", "xpnet"], env=_clean_env()).stdout
    data = digit_folder(work / "data", 96, 50, bars=False)
    xpnet = bin_dir / "xpnet"
    env_vars = _clean_env()
    assert _ok([xpnet, "--version"], env=env_vars).stdout.startswith("xpnet ")
    out = _ok([xpnet, "train", "--data-dir", data, "--out", work / "run", "--epochs", "1", "--width", "0.125",
               "--batch-size", "32", "--eval-batch-size", "50"], cwd=work, env=env_vars)
    assert "done:" in out.stdout
    assert all((work / "run" / f).is_file() for f in ("best.safetensors", "metrics.csv", "curves.png", "confusion.png"))
    out = _ok([xpnet, "evaluate", "--checkpoint", work / "run" / "best.safetensors", "--data-dir", data, "--json"],
              env=env_vars)
    assert json.loads(out.stdout)["test_images"] == 50
    _ok([python, "-c", "from PIL import Image; import numpy; "
         f"Image.fromarray(numpy.zeros((20, 20), numpy.uint8)).save({str(work / 'x.png')!r})"])
    # A blank image holds no digit: predict says so, with its own exit status.
    out = _run([xpnet, "predict", "--checkpoint", work / "run" / "best.safetensors", work / "x.png"], env=env_vars)
    assert out.returncode == 3 and out.stdout.strip() == f"{work / 'x.png'}: no digit (the image is blank)", out
    _ok([xpnet, "bench", "--smoke", "--no-torch", "--out", work / "bench"], cwd=work, env=env_vars)
    bench = json.loads((work / "bench" / "bench.json").read_text())
    assert bench["torch"] is None and bench["rows"][0]["xpnet_train_ips"] > 0
    # The kernels split their work over every core the process may use, and threadpoolctl is what
    # lets them: it reports the BLAS library they pin to one thread per kernel thread.
    code = ("import os, threading, time\n"
            "from threadpoolctl import threadpool_info\n"
            "from xpnet.functional import parallel\n"
            "import numpy\n"
            "seen = set()\n"
            "def body(t, n0, n1):\n"
            "    seen.add(threading.get_ident())\n"
            "    time.sleep(0.01)\n"  # every thread's run overlaps the others'
            "parallel.for_chunks(numpy, 64, 1, body)\n"
            "blas = max(i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas')\n"
            "print(parallel.threads(), blas, len(seen))\n")
    threads, blas_threads, used = map(int, _ok([python, "-c", code], env=env_vars).stdout.split())
    assert threads == blas_threads == used
