"""xpnet.functional.jit's helper process (``compile_ahead``): with an empty Numba cache it compiles
the loops from the end of a step while this process compiles from the start, and the loops it saved
are then loaded here, not compiled; with a warm cache none starts; one that dies or cannot start
changes nothing but speed; it ends when stopped, and with its parent.

Each case runs in a fresh Python with its own empty ``NUMBA_CACHE_DIR`` (a process that has
compiled a loop keeps it in memory, and Numba reads the cache folder once, on import), on the
cheapest loops."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy
import pytest

from xpnet.functional import jit

pytestmark = pytest.mark.skipif(not jit.available(), reason="numba is not installed")

ROOT = Path(__file__).resolve().parents[2]

# Compiled in this order by a run; the helper compiles all but the last, from the end.
CHEAP = ("bn_affine_relu", "sgd", "sgd_momentum", "sgd_nesterov")

PRELUDE = """
import json, sys, numpy
from xpnet.functional import jit, _jit_loops as L
CHEAP = %r

def report(**extra):
    print(json.dumps(dict(
        compiled={n: L.compiled(n) for n in CHEAP},
        loaded={n: sum(getattr(L, n).stats.cache_hits.values()) for n in CHEAP}, **extra)))

def sgd_momentum_matches_numpy():
    rng = numpy.random.default_rng(0)
    p, g, b = (rng.standard_normal(1000).astype(numpy.float32) for _ in range(3))
    lr, wd, m = numpy.float32(0.1), numpy.float32(5e-4), numpy.float32(0.9)
    ep, eb = p.copy(), b * m + (g + wd * p)
    ep -= lr * eb
    L.sgd_momentum(p, g, b, lr, wd, m)
    return bool((p == ep).all() and (b == eb).all())
""" % (CHEAP,)


def _python(tmp_path, body, cache="cache"):
    """Run PRELUDE + body in a fresh Python whose Numba cache is tmp_path/cache -> its last
    stdout line, parsed as JSON."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / cache), PYTHONPATH=str(ROOT), XPNET_JIT="1")
    done = subprocess.run([sys.executable, "-c", PRELUDE + body], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_cold_cache_starts_a_helper_whose_loops_are_then_loaded_not_compiled(tmp_path):
    first = _python(tmp_path, """
helper = jit.compile_ahead(CHEAP)
started = helper is not None
helper.process.wait(60)  # it compiles its three, then ends
by_helper = helper.stop()
L.warm_up("float32", CHEAP)
report(started=started, by_helper=by_helper, rc=helper.process.returncode, right=sgd_momentum_matches_numpy())
""")
    assert first["started"] and first["rc"] == 0 and first["right"]
    assert first["by_helper"] == ["sgd_momentum", "sgd", "bn_affine_relu"]  # from the step's end back
    assert first["compiled"] == {"bn_affine_relu": 0, "sgd": 0, "sgd_momentum": 0, "sgd_nesterov": 1}
    assert first["loaded"] == {"bn_affine_relu": 1, "sgd": 1, "sgd_momentum": 1, "sgd_nesterov": 0}

    # The cache is warm now: no process starts (Popen fails if called), and nothing is compiled.
    warm = _python(tmp_path, """
import subprocess
def refuse(*a, **k):
    raise AssertionError("a helper started with a warm cache")
subprocess.Popen = refuse
none = jit.compile_ahead(CHEAP) is None
L.warm_up("float32", CHEAP)
report(none=none)
""")
    assert warm["none"]
    assert set(warm["compiled"].values()) == {0} and set(warm["loaded"].values()) == {1}


def test_a_helper_that_cannot_start_or_dies_changes_nothing_but_speed(tmp_path):
    out = _python(tmp_path, """
real = sys.executable
sys.executable = real + "-not-there"
no_start = jit.compile_ahead(CHEAP[:2]) is None  # Popen raises: no helper, no error
sys.executable = real
helper = jit.compile_ahead(CHEAP[2:] + CHEAP[:1])  # sgd_momentum by the helper, bn_affine_relu here
helper.process.kill()
helper.process.wait(30)
by_helper = helper.stop()
L.warm_up("float32", CHEAP)
report(no_start=no_start, by_helper=by_helper, right=sgd_momentum_matches_numpy())
""")
    assert out["no_start"] and out["by_helper"] == [] and out["right"]
    assert set(out["compiled"].values()) == {1}  # every loop compiled here, as without a helper
    assert set(out["loaded"].values()) == {0}


def test_stop_ends_a_running_helper_at_once(tmp_path):
    out = _python(tmp_path, """
import time
from xpnet.functional._jit_loops import ALL_ORDER
helper = jit.compile_ahead(ALL_ORDER)  # some 10 s of compiling
t0 = time.perf_counter()
first = helper.stop()
seconds = time.perf_counter() - t0
report(rc=helper.process.returncode, seconds=seconds, again=helper.stop() == first)
""")
    assert out["rc"] is not None and out["rc"] != 0  # ended by stop, not by finishing its list
    assert out["seconds"] < 5 and out["again"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_the_helper_ends_with_its_parent(tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", PRELUDE + """
import time
from xpnet.functional._jit_loops import ALL_ORDER
helper = jit.compile_ahead(ALL_ORDER)
print(helper.process.pid, flush=True)
time.sleep(120)
"""], env=dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT), XPNET_JIT="1"),
        stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)  # no chance to stop its helper
    parent.wait(30)
    deadline = time.monotonic() + 5  # its list would take some 10 s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    alive = _alive(pid)
    if alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "the helper outlived its parent"


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its parent's reaper is missing


def test_the_orders_name_every_loop_and_the_step_calls_them_in_step_order(monkeypatch):
    """STEP_ORDER is the order a ResNet-9 train step first calls the loops (the helper works
    from its end), and ALL_ORDER holds each loop once."""
    from _digits import digit_set

    from xpnet.functional import _jit_loops as L
    from xpnet.data import batches
    from xpnet.training.config import TrainConfig
    from xpnet.training.runner import XpnetRunner, train_step

    assert sorted(L.ALL_ORDER) == sorted(f.__name__ for f in L.LOOPS)
    assert set(L.STEP_ORDER) <= set(L.ALL_ORDER) and L.ALL_ORDER[-1] == L.STEP_ORDER[-1]
    previous = jit.set_enabled(True)
    calls, real = [], jit.kernel

    def recording(name):
        loop = real(name)

        def called(*args):
            calls.append(name)
            return loop(*args)

        return called

    monkeypatch.setattr(jit, "kernel", recording)
    try:
        cfg = TrainConfig(width=0.25, batch_size=16)  # the fast preset's width, on 28x28 digits
        rng = numpy.random.default_rng(0)
        runner = XpnetRunner(cfg, 10, rng)
        data = digit_set(16, 1)
        x, y = next(batches(data.train_images, data.train_labels, 16, rng, shuffle=False, augment=0))
        train_step(runner, x, y, 0.1)
    finally:
        jit.set_enabled(previous)
    first = list(dict.fromkeys(calls))
    assert first == list(L.STEP_ORDER)
