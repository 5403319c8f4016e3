"""A short tour on synthetic digits: build ResNet-9, check its gradients, take a few steps.

    python -m xpnet.demo
"""

from __future__ import annotations

import argparse
import time

import numpy

from xpnet import backend, nn, optim
from xpnet.gradient_check import check_module
from xpnet.models import ResNet9


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backend", choices=backend.BACKENDS, default="numpy")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    xp = backend.use(args.backend)
    rng = numpy.random.default_rng(args.seed)

    tiny = ResNet9(width=1 / 32, rng=rng)
    x64 = xp.asarray(rng.standard_normal((2, 1, 28, 28)))
    check_module(tiny, x64)
    print("gradient check of a 1/32-width ResNet-9 in float64: backward agrees with finite differences")

    net = ResNet9(rng=rng)
    opt = optim.Adam(net.named_parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x = xp.asarray(rng.standard_normal((args.batch_size, 1, 28, 28)).astype(numpy.float32))
    y = xp.asarray(rng.integers(0, 10, args.batch_size))
    for step in range(args.steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        net.backward(loss_fn.backward())
        opt.step()
        backend.synchronize()
        dt = time.perf_counter() - t0
        print(f"step {step}: loss {loss:.4f}  ({args.batch_size / dt:.1f} images/s)")


if __name__ == "__main__":
    main()
