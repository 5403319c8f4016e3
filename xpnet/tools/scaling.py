"""``python -m xpnet.tools.scaling``: data-parallel training speed, N ranks x T threads against one
process x N*T threads on the same machine.

Each configuration runs in child processes (``mpiexec -n N python -m xpnet.tools.scaling --worker``
and ``python -m xpnet.tools.scaling --worker``, with ``XPNET_THREADS`` set), alternating, a round at a
time; each worker times a few train steps of ResNet-9 on random batches at one global batch size
(forward, backward, gradient Allreduce, SGD update; one untimed step first, the ranks meeting at
a barrier before the clock is read) and prints images per second. The report gives the medians
and their ratio, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from xpnet.cli.argtypes import positive_float, positive_int


def worker(args) -> None:
    import numpy

    from xpnet import distributed
    from xpnet.training.config import TrainConfig
    from xpnet.training.runner import build_runner, train_step

    comm = distributed.world()
    cfg = TrainConfig(batch_size=args.batch_size, width=args.width, sync_bn=args.sync_bn, schedule="constant")
    rng = numpy.random.default_rng(0)
    runner = build_runner(cfg, 10, rng)  # fit's runner, and below fit's step on this rank's slice
    runner.start(comm)
    x = rng.standard_normal((args.batch_size, 1, 28, 28)).astype(numpy.float32)
    y = rng.integers(0, 10, args.batch_size)

    def step():
        for xs, ys in comm.shard([(x, y)]):
            train_step(runner, xs, ys, cfg.lr)

    step()
    comm.barrier()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    comm.barrier()
    seconds = time.perf_counter() - t0
    if comm.is_root:
        print(json.dumps(dict(images_per_s=args.steps * args.batch_size / seconds)), flush=True)


def _run(cmd, threads):
    env = {**os.environ, "XPNET_THREADS": str(threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"xpnet.tools.scaling: error: {' '.join(cmd[:4])}... failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m xpnet.tools.scaling", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ranks", type=positive_int, default=2, help="MPI ranks (N)")
    p.add_argument("--threads", type=positive_int, default=1, help="kernel threads per rank (T)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="global batch")
    p.add_argument("--width", type=positive_float, default=1.0, help="channel multiplier")
    p.add_argument("--steps", type=positive_int, default=5, help="timed steps per measurement")
    p.add_argument("--rounds", type=positive_int, default=3, help="measurements of each configuration")
    p.add_argument("--sync-bn", action="store_true", help="synchronised BatchNorm")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    mpiexec = shutil.which("mpiexec", path=path)
    if mpiexec is None:
        print("python -m xpnet.tools.scaling: error: no mpiexec found: pip install 'xpnet[mpi]'", file=sys.stderr)
        return 1
    flags = ["--worker", "--batch-size", str(args.batch_size), "--width", str(args.width), "--steps", str(args.steps)]
    flags += ["--sync-bn"] if args.sync_bn else []
    one = [sys.executable, "-m", "xpnet.tools.scaling", *flags]
    ranks = [mpiexec, "-n", str(args.ranks), *one]
    solo, multi = [], []
    for _ in range(args.rounds):
        solo.append(_run(one, args.ranks * args.threads))
        multi.append(_run(ranks, args.threads))
    a, b = statistics.median(solo), statistics.median(multi)
    print(f"batch {args.batch_size}, width {args.width}, sync-bn {args.sync_bn}, "
          f"{args.steps} steps x {args.rounds} rounds")
    print(f"1 process x {args.ranks * args.threads} threads: {a:.1f} img/s  "
          f"(runs: {', '.join(f'{v:.1f}' for v in solo)})")
    print(f"{args.ranks} ranks x {args.threads} threads: {b:.1f} img/s  "
          f"(runs: {', '.join(f'{v:.1f}' for v in multi)})")
    print(f"ratio (ranks / process): {b / a:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
