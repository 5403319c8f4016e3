"""How busy the kernel threads are inside a train step.

    python benchmarks/tools/thread_use.py --width 0.25 --batch 64

Wraps ``xpnet.functional.parallel.for_chunks`` so that every chunk's body is timed with
``time.thread_time`` (CPU time of its thread, so time spent waiting for the GIL or for the other
threads does not count), then runs train steps of the bench's model. Printed per calling
function: calls and chunks per step, wall time of the loops, each thread's busy time and the
efficiency busy / (threads x wall); and how much of the step runs outside every chunk loop.
"""

import argparse
import collections
import sys
import time

from xpnet.tools import bench
from xpnet.functional import conv, fused, parallel, winograd


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)
    runner = bench.Timed(bench.bench_config(args.width, args.batch))
    for _ in range(3):
        runner.train_step()
    k = parallel.threads()
    stats = collections.defaultdict(lambda: dict(calls=0, chunks=0, wall=0.0, busy=[0.0] * k))
    original = parallel.for_chunks

    def timed_for_chunks(xp, n, nb, body):
        st = stats[sys._getframe(1).f_code.co_name]

        def timed(t, n0, n1):
            start = time.thread_time()
            body(t, n0, n1)
            st["busy"][t] += time.thread_time() - start

        start = time.perf_counter()
        original(xp, n, nb, timed)
        st["wall"] += time.perf_counter() - start
        st["calls"] += 1
        st["chunks"] += -(-n // nb)

    modules = [m for m in (fused, winograd, conv) if hasattr(m, "for_chunks")]
    for m in modules:
        m.for_chunks = timed_for_chunks
    try:
        start = time.perf_counter()
        for _ in range(args.steps):
            runner.train_step()
        step = (time.perf_counter() - start) / args.steps
    finally:
        for m in modules:
            m.for_chunks = original
    n = args.steps
    print(f"width {args.width}, batch {args.batch}, {k} kernel threads: step {step * 1e3:.1f} ms")
    inside = 0.0
    for name, st in sorted(stats.items(), key=lambda kv: -kv[1]["wall"]):
        inside += st["wall"]
        busy = " ".join(f"{b / n * 1e3:6.2f}" for b in st["busy"])
        eff = sum(st["busy"]) / (k * st["wall"]) if st["wall"] else 0.0
        print(f"{name:28s} calls/step {st['calls'] / n:5.1f}  chunks/call {st['chunks'] / st['calls']:4.1f}  "
              f"wall {st['wall'] / n * 1e3:6.2f} ms  busy per thread {busy} ms  efficiency {eff:.2f}")
    print(f"outside the chunk loops: {(step - inside / n) * 1e3:.1f} ms of {step * 1e3:.1f}")


if __name__ == "__main__":
    main()
