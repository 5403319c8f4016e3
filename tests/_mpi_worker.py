"""Scenarios that tests/test_distributed.py runs under ``mpiexec -n 2``: a rank that raises,
ranks whose weights differ, Ctrl-C seen by one rank only. Each prints what it saw; the test reads
the output."""

import os
import signal
import sys

import numpy

from xpnet import distributed
from xpnet.data import MNIST
from xpnet.models import build_model
from xpnet.training.config import TrainConfig
from xpnet.training.loop import fit


def rank_raises():
    comm = distributed.world()
    with comm.guard("worker"):
        if comm.rank == 1:
            raise ValueError("rank 1 fails on purpose")
        comm.barrier()  # rank 0 waits here for a rank that never comes
    print("rank 0 passed the barrier", flush=True)


def weights_diverge():
    comm = distributed.world()
    cfg = TrainConfig(width=0.125)
    model = build_model(cfg.model_config(), 10, numpy.random.default_rng(0))
    comm.start(model, cfg)
    comm.settle(model)
    print(f"rank {comm.rank}: same weights agree", flush=True)
    if comm.rank == 1:
        model.parameters()[0].data[0, 0, 0, 0] += 1e-6
    try:
        comm.settle(model)
    except RuntimeError as e:
        print(f"rank {comm.rank}: {e}", flush=True)


def interrupt_one_rank():
    """Rank 1 alone gets SIGINT during its third step: both ranks must stop after that step."""
    comm = distributed.world()
    rng = numpy.random.default_rng(0)
    images = rng.integers(0, 255, (128, 28, 28)).astype(numpy.uint8)
    labels = rng.integers(0, 10, 128)
    data = MNIST(images[:96], labels[:96], images[96:], labels[96:])
    sync, steps = comm.sync_grads, []

    def sync_grads():
        steps.append(1)
        if comm.rank == 1 and len(steps) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        sync()

    comm.sync_grads = sync_grads
    try:
        fit(TrainConfig(epochs=1, batch_size=16, width=0.125), data, sys.argv[2], comm=comm, plots=False)
    except KeyboardInterrupt:
        print(f"rank {comm.rank} stopped after {len(steps)} steps", flush=True)


def dropout_resume():
    """Two epochs with dropout over uneven slices (global batch 31: 16 + 15 images), straight,
    then with Ctrl-C on rank 0 inside the second epoch and a resume. Prints whether the ranks
    drew each epoch from the same generator state and whether the resumed run ends where the
    straight one does."""
    from pathlib import Path

    import xpnet.training.loop as loop
    from xpnet import checkpoint

    comm = distributed.world()
    rng = numpy.random.default_rng(0)
    images = rng.integers(0, 255, (128, 28, 28)).astype(numpy.uint8)
    labels = rng.integers(0, 10, 128)
    data = MNIST(images[:96], labels[:96], images[96:], labels[96:])
    cfg = TrainConfig(epochs=2, batch_size=31, width=0.125, dropout=0.3)
    out, quiet = Path(sys.argv[2]), dict(comm=comm, plots=False, log=lambda s: None)
    real_batches, states = loop.batches, []

    def batches(*args, **kwargs):
        states.append(args[3].bit_generator.state)  # the run's generator, as the epoch starts
        return real_batches(*args, **kwargs)

    loop.batches = batches
    fit(cfg, data, out / "once", **quiet)
    every, drawn = comm.allgather(states), len(states)
    sync, steps = comm.sync_grads, []

    def sync_grads():
        steps.append(1)
        if comm.rank == 0 and len(steps) == 6:  # the second batch of the second epoch
            os.kill(os.getpid(), signal.SIGINT)
        sync()

    comm.sync_grads = sync_grads
    try:
        fit(cfg, data, out / "twice", **quiet)
    except KeyboardInterrupt:
        pass
    comm.sync_grads = sync
    fit(None, data, out / "twice", resume=out / "twice" / "last.safetensors", **quiet)
    if comm.is_root:
        once, _ = checkpoint.load(out / "once" / "last.safetensors")
        twice, _ = checkpoint.load(out / "twice" / "last.safetensors")
        exact = once.keys() == twice.keys() and all(numpy.array_equal(once[k], twice[k]) for k in once)
        print(f"epochs drawn {drawn}, ranks agree {every[0] == every[1]}, resume exact {exact}", flush=True)


def rank_stops():
    """Rank 1 stops itself (SIGSTOP) after the first barrier: rank 0's watchdog must end the job."""
    comm = distributed.world()
    comm.barrier()
    print(f"rank {comm.rank} passed the first barrier", flush=True)
    if comm.rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    comm.allreduce_(numpy.ones(4))
    print(f"rank {comm.rank} passed the allreduce", flush=True)


def nccl_on_device():
    """Each rank on the fake device of a two-GPU machine: its own GPU, and device sums by NCCL."""
    from xpnet import backend
    from xpnet.testing import fakecupy

    with fakecupy.installed(gpus=2) as dev:
        comm = distributed.world()
        backend.use("cupy")
        flat = backend.to_device(numpy.full(6, comm.rank + 1, dtype=numpy.float32))
        before = dev.counts.snapshot()
        comm.allreduce_(flat)  # the first one sets NCCL up
        comm.allreduce_(flat)
        spent = dev.counts.since(before)
        print(f"rank {comm.rank}: gpu {backend.gpu_index()}, sums {backend.asnumpy(flat).tolist()}, "
              f"host copies {spent['to_device'] + spent['to_host']}, nccl {dev.counts.by_name['nccl.allReduce']}",
              flush=True)
        backend.use("numpy")


def train_on_device():
    """``xpnet train --backend cupy`` under mpiexec on the fake device of a two-GPU machine."""
    from xpnet.cli import main
    from xpnet.testing import fakecupy

    with fakecupy.installed(gpus=2) as dev:
        code = main(["train", "--backend", "cupy", *sys.argv[2:]])
        print(f"exit {code}, nccl sums {dev.counts.by_name['nccl.allReduce']}", flush=True)


if __name__ == "__main__":
    {"rank_raises": rank_raises, "weights_diverge": weights_diverge, "interrupt_one_rank": interrupt_one_rank,
     "rank_stops": rank_stops, "dropout_resume": dropout_resume, "nccl_on_device": nccl_on_device,
     "train_on_device": train_on_device}[sys.argv[1]]()
