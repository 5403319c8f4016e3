"""Train-step images/s of two or more xpnet source trees, alternating in fresh processes.

    python benchmarks/tools/ab.py OLD_TREE NEW_TREE --configs 1:8 1:64 0.25:128 --rounds 3
    python benchmarks/tools/ab.py . '.@{"ELEMENTWISE_CHUNK_BYTES": 262144}' --configs 0.25:64

A tree is a checkout of this repository (``git worktree add /somewhere OLD``), optionally followed
by ``@`` and a JSON object of ``xpnet.functional.fused`` constants to set first; its key
``"allocator": true`` fixes malloc's thresholds first, as the command line does
(``xpnet.allocator``; the child process is not the command line, so by default it does not):

    python benchmarks/tools/ab.py . '.@{"allocator": true}' --configs 0.25:128 --rounds 3 Each config is
WIDTH:BATCH. Every measurement runs in a new interpreter that imports xpnet from its tree, times
the train step ``xpnet bench`` times (``fit``'s, through ``xpnet.tools.bench.Timed``; in trees older
than it, the bench's own), and reports the best of 3 blocks; the
trees take turns within each round, so a busy machine slows them alike. Printed: each tree's
median over rounds and its ratio to the first tree.

``--clock cpu`` times with the process's CPU time instead of the wall clock: on a machine shared
with other work it leaves out the time the process waited for a core. Use it with one thread and
no BLAS threads, whose spinning would count as work:

    XPNET_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/tools/ab.py OLD . --clock cpu
"""

import argparse
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
sys.path.insert(0, ".")
try:
    from xpnet.tools import bench
except ImportError:  # a tree from before the package was regrouped
    from xpnet import bench
from xpnet.functional import fused
width, batch = float(sys.argv[1]), int(sys.argv[2])
clock = time.process_time if sys.argv[4] == "cpu" else time.perf_counter
settings = json.loads(sys.argv[3])
if settings.pop("allocator", False):  # as the command line does (xpnet.allocator)
    from xpnet import allocator
    allocator.keep_freed_memory()
for name, value in settings.items():
    setattr(fused, name, value)
if hasattr(bench, "Timed"):
    runner = bench.Timed(bench.bench_config(width, batch))
else:  # the bench's own step, in older trees
    runner = bench._XpnetRunner(width, batch)
for _ in range(2):
    runner.train_step()
steps, times = max(2, 150 // batch), []
for _ in range(3):
    t0 = clock()
    for _ in range(steps):
        runner.train_step()
    times.append((clock() - t0) / steps)
print(batch / min(times))
"""


def measure(tree, width, batch, clock="wall"):
    folder, _, constants = tree.partition("@")
    out = subprocess.run([sys.executable, "-c", CHILD, str(width), str(batch), constants or "{}", clock],
                         cwd=folder, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"ab.py: {tree} failed: {out.stderr.strip().splitlines()[-1]}")
    return float(out.stdout.split()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trees", nargs="+", help="source trees, the first is the baseline")
    p.add_argument("--configs", nargs="+", default=["1:8", "1:64", "1:128"], help="WIDTH:BATCH")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="wall clock or process CPU time")
    args = p.parse_args(argv)
    configs = [(float(w), int(b)) for w, b in (c.split(":") for c in args.configs)]
    rates = {}
    for _ in range(args.rounds):
        for width, batch in configs:
            for tree in args.trees:
                rates.setdefault((width, batch, tree), []).append(measure(tree, width, batch, args.clock))
    for width, batch in configs:
        medians = [statistics.median(rates[(width, batch, t)]) for t in args.trees]
        cells = "  ".join(f"{t}: {m:.0f} img/s ({m / medians[0]:.3f})" for t, m in zip(args.trees, medians))
        print(f"width {width} batch {batch}: {cells}")


if __name__ == "__main__":
    main()
