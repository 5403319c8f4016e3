"""Scenarios that tests/test_distributed.py runs under ``mpiexec -n 2``: a rank that raises,
ranks whose weights differ. Each prints what it saw; the test reads the output."""

import sys

import numpy

from xpnet import distributed
from xpnet.train import TrainConfig, build_model


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


if __name__ == "__main__":
    {"rank_raises": rank_raises, "weights_diverge": weights_diverge}[sys.argv[1]]()
