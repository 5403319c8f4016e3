"""Data-parallel training: the sync-BN seam and the communicator in one process, then
``mpiexec -n 2 xpnet train`` against one process at the same global batch.

The MPI tests need mpi4py and an ``mpiexec`` (``pip install 'xpnet[mpi]'``) and skip without.
Tolerance for "equal" (``EQUAL``): the ranks add their partial sums (gradients, BatchNorm
statistics) in a different order than one process does, so results agree to float32 rounding
amplified over a few steps, not bit for bit: a relative L2 difference of the weights near 1e-7.
Rounding can also break a max-pool tie the other way (a window whose positions all see only
zeros gets Winograd outputs equal in exact arithmetic, and one ulp apart or not depending on how
the GEMMs were blocked), which sends that window's gradient elsewhere and moves the weights by
about 1e-4; the thread count alone does that here. So we ask for 2e-4, which a run without
sync-BN misses by more than five times.
"""

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy
import pytest

from _digits import digit_folder

from xpnet import checkpoint, distributed, nn
from xpnet.cli import main
from xpnet.functional import parallel
from xpnet.models import ResNet9
from xpnet.training.config import TrainConfig

# -- in one process: threads stand in for ranks ----------------------------------------------


class ThreadRanks:
    """k threads as k ranks; ``reduce_sums`` adds what every thread passes, in rank order."""

    def __init__(self, k):
        self.k = k
        self.barrier = threading.Barrier(k)
        self.parts = [None] * k
        self.local = threading.local()

    def reduce_sums(self, a):
        self.parts[self.local.rank] = a.copy()
        self.barrier.wait()
        total = sum(self.parts[1:], self.parts[0].copy())
        self.barrier.wait()
        return total

    def run(self, fn):
        out, errors = [None] * self.k, []

        def body(r):
            self.local.rank = r
            try:
                out[r] = fn(r)
            except BaseException as e:  # pragma: no cover - surfaced below
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=body, args=(r,)) for r in range(self.k)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return out


@pytest.fixture
def one_thread():
    previous = parallel.set_threads(1)  # the kernels' own pool is not shared by the rank threads
    yield
    parallel.set_threads(previous)


@pytest.mark.parametrize("split", [(10, 10), (11, 9)])
def test_sync_bn_on_slices_equals_the_whole_batch(one_thread, split):
    """Both BatchNorm paths (the fused conv blocks and the plain BatchNorm2d of conv shortcuts):
    outputs, running statistics and the summed gradients of the slices equal the whole batch's."""
    rng = numpy.random.default_rng(0)
    x = (rng.standard_normal((20, 1, 28, 28)) + 0.5).astype(numpy.float32)
    y = rng.integers(0, 10, 20)

    def model():
        return ResNet9(rng=numpy.random.default_rng(1), width=0.125, shortcut="conv").train()

    def step(net, xs, ys, scale):
        loss = nn.CrossEntropyLoss(0.1)
        out = net(xs)
        loss(out, ys)
        net.backward(loss.backward(scale))
        return out, {k: p.grad.copy() for k, p in net.named_parameters()}, net.state_dict()

    whole_out, whole_grads, whole_state = step(model(), x, y, 1.0)
    ranks = ThreadRanks(2)
    nets = [model(), model()]
    for net in nets:
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reduce_sums = ranks.reduce_sums
    bounds = [0, split[0], 20]
    parts = ranks.run(lambda r: step(nets[r], x[bounds[r] : bounds[r + 1]], y[bounds[r] : bounds[r + 1]],
                                     split[r] / 20))
    numpy.testing.assert_allclose(numpy.concatenate([p[0] for p in parts]), whole_out, rtol=1e-4, atol=1e-5)
    plain = 0
    for name, g in whole_grads.items():
        if name.endswith(".0.bias"):
            continue  # conv biases before BatchNorm: gradient zero up to rounding on both sides
        total = parts[0][1][name] + parts[1][1][name]
        numpy.testing.assert_allclose(total, g, rtol=1e-4, atol=1e-5 * float(abs(g).max()), err_msg=name)
    for name, v in whole_state.items():
        plain += "shortcut" in name
        numpy.testing.assert_allclose(parts[0][2][name], v, rtol=1e-4, atol=1e-6, err_msg=name)
        numpy.testing.assert_array_equal(parts[0][2][name], parts[1][2][name], err_msg=name)
    assert plain, "the model should have plain BatchNorm2d layers too"


def test_without_the_hook_slices_differ(one_thread):
    """The same comparison without sync-BN fails: the check above can tell."""
    rng = numpy.random.default_rng(0)
    x = (rng.standard_normal((20, 1, 28, 28)) + 0.5).astype(numpy.float32)
    net = ResNet9(rng=numpy.random.default_rng(1), width=0.125).train()
    whole = net(x)
    halves = numpy.concatenate([net(x[:10]), net(x[10:])])
    assert not numpy.allclose(whole, halves, rtol=1e-3, atol=1e-4)


def test_slices_cover_the_batch_and_differ_by_one_at_most():
    for n in range(1, 30):
        for size in range(1, min(n, 5) + 1):
            bounds = [distributed._slice(n, size, r) for r in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_gradients_become_views_of_one_flat_buffer():
    net = ResNet9(rng=numpy.random.default_rng(1), width=0.125)
    params = net.parameters()
    for i, p in enumerate(params):
        p.grad[...] = i
    before = [p.grad.copy() for p in params]
    (flat,) = distributed._flat_grads(params)
    assert flat.size == sum(p.grad.size for p in params)
    for p, b in zip(params, before):
        numpy.testing.assert_array_equal(p.grad, b)
        assert numpy.shares_memory(p.grad, flat)
    flat *= 2
    numpy.testing.assert_array_equal(params[3].grad, 2 * before[3])


def test_one_process_is_solo_and_the_fingerprint_follows_the_config(monkeypatch):
    for name in distributed.SIZE_VARIABLES + ("XPNET_MPI",):
        monkeypatch.delenv(name, raising=False)
    comm = distributed.world()
    assert isinstance(comm, distributed.Solo) and comm.is_root and comm.size == 1
    assert distributed.fingerprint(TrainConfig()) == distributed.fingerprint(TrainConfig())
    assert distributed.fingerprint(TrainConfig()) != distributed.fingerprint(TrainConfig(seed=1))


def test_a_launch_without_mpi4py_is_one_line_from_rank_0(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    for rank, lines in (("0", 1), ("1", 0)):
        monkeypatch.setenv("PMI_SIZE", "2")
        monkeypatch.setenv("PMI_RANK", rank)
        assert main(["train", "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == lines
        if lines:
            assert "mpi4py" in err[0] and "xpnet[mpi]" in err[0]
    assert not (tmp_path / "run").exists()


# -- under mpiexec ---------------------------------------------------------------------------


def _mpiexec():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    return shutil.which("mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


MPIEXEC = _mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="needs mpi4py and mpiexec: pip install 'xpnet[mpi]'")
SMALL = ["--width", "0.125", "--train-subset", "96", "--batch-size", "32", "--eval-batch-size", "30",
         "--lr", "0.02", "--schedule", "constant", "--no-plots"]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in distributed.SIZE_VARIABLES + distributed.RANK_VARIABLES}
    env["XPNET_THREADS"] = "1"  # two ranks on a two-core machine
    return env


def _mpirun(*args, n=2, timeout=120):
    return subprocess.run(
        [MPIEXEC, "-n", str(n), *args], capture_output=True, text=True, timeout=timeout, env=_env(),
        stdin=subprocess.DEVNULL,
    )


def _train(*argv, n=2):
    return _mpirun(sys.executable, "-m", "xpnet", "train", *map(str, argv), n=n)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A tiny learnable IDX set: class k has a bright bar at row 2k+4 over noise."""
    return digit_folder(tmp_path_factory.mktemp("digits"), 96, 60, noise=60)


def _weights(path):
    arrays, meta = checkpoint.load(path)
    return {k: v.astype(numpy.float64) for k, v in arrays.items() if k.startswith("model.")}, meta


EQUAL = 2e-4  # see the module docstring


def _rel_diff(a, b):
    num = sum(float(((a[k] - b[k]) ** 2).sum()) for k in a)
    den = sum(float((a[k] ** 2).sum()) for k in a)
    return (num / den) ** 0.5


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits):
    """One process, two epochs, the global batch of 32."""
    out = tmp_path_factory.mktemp("one")
    assert main(["train", "--data-dir", str(digits), "--out", str(out), "--epochs", "2", "--sync-bn", *SMALL]) == 0
    return _weights(out / "last.safetensors")


@needs_mpi
def test_two_ranks_with_sync_bn_equal_one_process(tmp_path, digits, reference):
    r = _train("--data-dir", digits, "--out", tmp_path / "sync", "--epochs", 2, "--sync-bn", *SMALL)
    assert r.returncode == 0, r.stderr
    assert "2 ranks" in r.stdout and r.stdout.count("epoch 2/2") == 1  # rank 0 alone reports
    weights, meta = _weights(tmp_path / "sync" / "last.safetensors")
    assert meta["ranks"] == 2 and meta["step"] == 6
    assert _rel_diff(reference[0], weights) < EQUAL
    # Without sync-BN each rank normalises its own 16 images: a different model, yet one model
    # (fit checks at every checkpoint that the ranks' weights agree, or it fails).
    r = _train("--data-dir", digits, "--out", tmp_path / "local", "--epochs", 2, *SMALL)
    assert r.returncode == 0, r.stderr
    local, _ = _weights(tmp_path / "local" / "last.safetensors")
    assert _rel_diff(reference[0], local) > 5 * EQUAL
    assert sorted(os.listdir(tmp_path / "local")) == ["best.safetensors", "last.safetensors", "losses.csv",
                                                      "metrics.csv", "summary.json"]


@needs_mpi
def test_two_ranks_take_the_same_steps_of_a_real_number_of_epochs(tmp_path, digits):
    """1.7 epochs of 3 global batches: 5 steps on each rank (the second epoch stops after 2),
    ending where one process ends."""
    flags = ["--epochs", "1.7", "--sync-bn", *SMALL]
    assert main(["train", "--data-dir", str(digits), "--out", str(tmp_path / "one"), *flags]) == 0
    r = _train("--data-dir", digits, "--out", tmp_path / "two", *flags)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("epoch 2/2") == 1 and "after 1.7 epochs" in r.stdout
    one, meta_one = _weights(tmp_path / "one" / "last.safetensors")
    two, meta_two = _weights(tmp_path / "two" / "last.safetensors")
    assert (meta_one["step"], meta_two["step"], meta_two["ranks"]) == (5, 5, 2)
    assert _rel_diff(one, two) < EQUAL


@needs_mpi
def test_checkpoints_resume_across_world_sizes(tmp_path, digits, reference):
    """2 ranks -> 1 process and 1 process -> 2 ranks, each stopped after epoch 1 and resumed,
    end where one uninterrupted process ends."""
    r = _train("--data-dir", digits, "--out", tmp_path / "a", "--epochs", 2, "--stop-after", 1, "--sync-bn", *SMALL)
    assert r.returncode == 0, r.stderr
    assert main(["train", "--data-dir", str(digits), "--out", str(tmp_path / "a"),
                 "--resume", str(tmp_path / "a" / "last.safetensors"), "--no-plots"]) == 0
    assert main(["train", "--data-dir", str(digits), "--out", str(tmp_path / "b"), "--epochs", "2",
                 "--stop-after", "1", "--sync-bn", *SMALL]) == 0
    r = _train("--data-dir", digits, "--out", tmp_path / "b", "--resume", tmp_path / "b" / "last.safetensors",
               "--no-plots")
    assert r.returncode == 0, r.stderr
    for run, ranks in (("a", 1), ("b", 2)):
        weights, meta = _weights(tmp_path / run / "last.safetensors")
        assert meta["epoch"] == 2 and meta["ranks"] == ranks
        assert _rel_diff(reference[0], weights) < EQUAL, run


@needs_mpi
def test_bad_launches_are_one_line(tmp_path, digits):
    r = _train("--data-dir", digits, "--out", tmp_path / "x", "--epochs", 1, *SMALL[:4], "--batch-size", 1)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [
        "xpnet train: error: --batch-size 1 is smaller than the 2 ranks: every rank needs at least one image of each "
        "batch"
    ]
    argv = [sys.executable, "-m", "xpnet", "train", "--data-dir", str(digits), "--out", str(tmp_path / "y"), *SMALL]
    r = subprocess.run([MPIEXEC, "-n", "1", *argv, "--seed", "0", ":", "-n", "1", *argv, "--seed", "1"],
                       capture_output=True, text=True, timeout=120, env=_env(), stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "ranks [1] run a different xpnet version or config than rank 0" in lines[0]
    assert not (tmp_path / "x" / "last.safetensors").exists() and not (tmp_path / "y" / "last.safetensors").exists()


@needs_mpi
def test_a_failing_rank_ends_the_job_and_diverged_weights_are_caught():
    worker = str(Path(__file__).with_name("_mpi_worker.py"))
    r = _mpirun(sys.executable, worker, "rank_raises", timeout=60)
    assert r.returncode != 0
    assert "worker: error on rank 1 of 2: rank 1 fails on purpose; ending the job" in r.stderr
    assert "passed the barrier" not in r.stdout
    r = _mpirun(sys.executable, worker, "weights_diverge", timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("same weights agree") == 2
    assert r.stdout.count("the ranks' weights have diverged") == 2


@needs_mpi
def test_a_rank_that_stops_answering_ends_the_job_in_one_line():
    worker = str(Path(__file__).with_name("_mpi_worker.py"))
    env = {**_env(), "XPNET_MPI_TIMEOUT": "3"}
    t0 = time.monotonic()
    r = subprocess.run([MPIEXEC, "-n", "2", sys.executable, worker, "rank_stops"], capture_output=True,
                       text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and time.monotonic() - t0 < 30
    assert r.stdout.count("passed the first barrier") == 2 and "passed the allreduce" not in r.stdout
    lines = [line for line in r.stderr.splitlines() if "xpnet" in line]
    assert len(lines) == 1, r.stderr
    assert "rank 0 of 2 waited 3 s in an allreduce for a rank that stopped answering" in lines[0]
    assert "XPNET_MPI_TIMEOUT=3 sets the wait" in lines[0]


def test_a_bad_mpi_timeout_is_one_line(monkeypatch):
    for bad in ("soon", "-1", "inf", "nan"):
        monkeypatch.setenv("XPNET_MPI_TIMEOUT", bad)
        with pytest.raises(distributed.DistributedError, match="XPNET_MPI_TIMEOUT"):
            distributed.mpi_timeout()
    monkeypatch.setenv("XPNET_MPI_TIMEOUT", "0")
    assert distributed.mpi_timeout() == 0
    monkeypatch.delenv("XPNET_MPI_TIMEOUT")
    assert distributed.mpi_timeout() == distributed.DEFAULT_TIMEOUT


@needs_mpi
@pytest.mark.parametrize("dropout", ["0", "0.3"])
def test_uneven_slices_with_sync_bn_equal_one_process(tmp_path, digits, dropout):
    """A global batch of 31 over 2 ranks: slices of 16 and 15, weighted by their share (and a
    last batch of 3 split 2 + 1); with dropout, each rank's rows of one process's masks."""
    flags = ["--data-dir", str(digits), "--epochs", "1", "--sync-bn", *SMALL, "--batch-size", "31",
             "--dropout", dropout]
    assert main(["train", "--out", str(tmp_path / "one"), *flags]) == 0
    r = _train("--out", tmp_path / "two", *flags)
    assert r.returncode == 0, r.stderr
    one, _ = _weights(tmp_path / "one" / "last.safetensors")
    two, meta = _weights(tmp_path / "two" / "last.safetensors")
    assert meta["step"] == 4
    assert _rel_diff(one, two) < EQUAL


@needs_mpi
def test_ctrl_c_on_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    worker = str(Path(__file__).with_name("_mpi_worker.py"))
    r = _mpirun(sys.executable, worker, "interrupt_one_rank", tmp_path / "run", timeout=60)
    assert r.returncode == 0, r.stderr
    # mpiexec merges the ranks' output streams, and two ranks' lines can interleave mid-line.
    stopped = sorted(re.findall(r"rank (\d) stopped after (\d+) steps", r.stdout))
    assert stopped == [("0", "3"), ("1", "3")], r.stdout
    saved = re.findall(r"interrupted: saved \S+ at epoch (\d+), batch (\d+)/(\d+)", r.stdout)
    assert saved == [("1", "3", "6")], r.stdout  # rank 0 alone
    _, meta = checkpoint.load(tmp_path / "run" / "last.safetensors")
    assert (meta["epoch"], meta["batch"], meta["step"], meta["ranks"]) == (0, 3, 3, 2)


@needs_mpi
def test_dropout_over_uneven_slices_keeps_the_ranks_generators_equal_and_resumes_exactly(tmp_path):
    """Each rank draws the global batch's dropout mask and keeps its rows, so the ranks' generators
    draw alike whatever their slices' sizes: they shuffle every epoch alike, and a Ctrl-C inside an
    epoch resumes bit for bit."""
    worker = str(Path(__file__).with_name("_mpi_worker.py"))
    r = _mpirun(sys.executable, worker, "dropout_resume", tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "epochs drawn 2, ranks agree True, resume exact True" in r.stdout, r.stdout


@needs_mpi
def test_resume_under_mpiexec_is_exact(tmp_path, digits):
    """Two ranks: one epoch, then a resume under mpiexec, ends bit for bit where two epochs in
    one go end (per-rank BatchNorm, mid-schedule)."""
    flags = ["--data-dir", digits, "--epochs", 2, *SMALL]
    assert _train("--out", tmp_path / "once", *flags).returncode == 0
    r = _train("--out", tmp_path / "twice", *flags, "--stop-after", 1)
    assert r.returncode == 0, r.stderr
    r = _train("--resume", tmp_path / "twice" / "last.safetensors", "--no-plots")
    assert r.returncode == 0, r.stderr
    once, meta_once = checkpoint.load(tmp_path / "once" / "last.safetensors")
    twice, meta_twice = checkpoint.load(tmp_path / "twice" / "last.safetensors")
    assert once.keys() == twice.keys() and any(k.startswith("optim.") for k in once)
    for k in once:
        numpy.testing.assert_array_equal(once[k], twice[k], err_msg=k)
    assert meta_once["history"][1]["test_accuracy"] == meta_twice["history"][1]["test_accuracy"]


@needs_mpi
def test_the_scaling_command_runs(tmp_path):
    r = subprocess.run([sys.executable, "-m", "xpnet.tools.scaling", "--width", "0.125", "--batch-size", "8",
                        "--steps", "1", "--rounds", "1"],
                       capture_output=True, text=True, timeout=120, env=_env(), stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[1].startswith("1 process x 2 threads: ") and lines[2].startswith("2 ranks x 1 threads: ")
    assert float(lines[3].split(": ")[1]) > 0


def test_the_scaling_command_refuses_a_count_below_one(capsys):
    from xpnet.tools import scaling

    with pytest.raises(SystemExit) as e:
        scaling.main(["--ranks", "0"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.splitlines()[-1].endswith("--ranks: must be a positive integer, got 0")


@needs_mpi
def test_on_gpus_each_rank_takes_its_own_and_nccl_sums_on_the_devices():
    worker = str(Path(__file__).with_name("_mpi_worker.py"))
    r = _mpirun(sys.executable, worker, "nccl_on_device", timeout=60)
    assert r.returncode == 0, r.stderr
    for rank in (0, 1):
        # 1 + 2, then that summed again; no copy through the host; two NCCL calls.
        assert f"rank {rank}: gpu {rank}, sums {[6.0] * 6}, host copies 0, nccl 2" in r.stdout, r.stdout


@needs_mpi
def test_two_ranks_on_gpus_with_sync_bn_equal_one_process(tmp_path, digits, reference):
    # The gradients and the synchronised BatchNorm's sums go through NCCL on the fake device.
    worker = str(Path(__file__).with_name("_mpi_worker.py"))
    r = _mpirun(sys.executable, worker, "train_on_device", "--data-dir", str(digits), "--out", str(tmp_path / "gpu"),
                "--epochs", "2", "--sync-bn", *SMALL, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("exit 0, nccl sums ") == 2, r.stdout
    assert "nccl sums 0" not in r.stdout
    weights, _ = _weights(tmp_path / "gpu" / "last.safetensors")
    assert _rel_diff(weights, reference[0]) < EQUAL
