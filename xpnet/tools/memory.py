"""How much host memory a training step will take, and whether it fits: measured, not guessed.

A batch of 100,000 full-width images needs far more memory than a desktop has; started anyway, the
run fills memory until the kernel kills it, and a swapping machine cannot even take a Ctrl-C. So
``xpnet train`` asks here first. NumPy reports its allocations to ``tracemalloc``, so the peak of
one training step (forward, backward, optimizer) of the same model at two smaller batch sizes gives
a fixed part and a per-image part; the estimate for the real batch extrapolates the line. It is a
rough figure (1.0 to 1.22 times a measured step at batches 256 and 512, widths 1 to 0.125), good
enough to refuse a batch that cannot fit.

Only the NumPy backend is estimated; a GPU's memory is CuPy's business.
"""

from __future__ import annotations

import dataclasses
import tracemalloc

import numpy

# The two probe batches: large enough that the kernels' chunk scratch has stopped growing (below
# about 64 images it grows with the batch and would steepen the slope), yet cheap next to an epoch.
# Batches up to the larger one are not estimated at all.
PROBES = (64, 128)


def available_bytes() -> int | None:
    """Memory the system can give a new allocation without swapping (Linux MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def step_peak_bytes(cfg, num_classes: int, image_shape, batch: int) -> int:
    """Peak bytes allocated while building the runner ``fit`` runs for ``cfg`` (a ``TrainConfig``;
    its framework, batch size and seed aside) and running its training step at ``batch``.

    image_shape: (H, W). Uses its own generator and model; the caller's state is untouched.
    """
    from xpnet import backend
    from xpnet.training.runner import build_runner, train_step

    cfg = dataclasses.replace(cfg, framework="xpnet", batch_size=batch, image_size=tuple(image_shape))
    rng = numpy.random.default_rng(0)
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        runner = build_runner(cfg, num_classes, rng)
        x = backend.to_device(rng.standard_normal((batch, 1, *image_shape)).astype(numpy.float32))
        y = backend.to_device(rng.integers(0, num_classes, batch))
        train_step(runner, x, y, cfg.lr)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if started:
            tracemalloc.stop()
    return peak - base


def estimate_step_bytes(cfg, num_classes: int, image_shape, batch: int) -> int:
    """Estimated peak bytes of ``cfg``'s training step at ``batch``, from two small measured steps."""
    small, large = (step_peak_bytes(cfg, num_classes, image_shape, b) for b in PROBES)
    per_image = max(large - small, 0) / (PROBES[1] - PROBES[0])
    return int(large + per_image * (batch - PROBES[1]))


def fits(need: int, available: int | None):
    """(ok, warn): ``ok`` false when ``need`` exceeds what is available; ``warn`` when it takes
    more than 80 % of it (other programs, the test set's evaluation and noise need the rest)."""
    if available is None:
        return True, False
    return need <= available, need > 0.8 * available


def check_batch(cfg, data, warn) -> None:
    """Refuse (``ConfigError``, one line) a batch larger than the training images ``cfg`` uses, or
    one whose step will not fit in memory on the NumPy backend; ``warn(line)`` when it will take
    most of it. data: an ``xpnet.data.MNIST``."""
    from xpnet import backend
    from xpnet.training.config import ConfigError

    n_total = len(data.train_labels)
    if cfg.train_subset > n_total:
        raise ConfigError(f"--train-subset {cfg.train_subset} exceeds the {n_total} training images")
    n = cfg.train_subset or n_total
    if cfg.batch_size > n:
        used = f"the {n} training images" + (f" of --train-subset {cfg.train_subset}" if cfg.train_subset else "")
        raise ConfigError(f"--batch-size {cfg.batch_size} exceeds {used}")
    if backend.name() != "numpy" or cfg.batch_size <= max(PROBES):
        return
    need = estimate_step_bytes(cfg, 10, cfg.for_data(data.image_shape).image_size, cfg.batch_size)
    available = available_bytes()
    ok, tight = fits(need, available)
    gib = 2.0**30
    if not ok:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} at width {cfg.width} needs about {need / gib:.1f} GiB for a "
            f"training step but {available / gib:.1f} GiB of memory is available; use a smaller batch"
        )
    if tight:
        warn(f"a training step at batch {cfg.batch_size} needs about {need / gib:.1f} GiB of the "
             f"{available / gib:.1f} GiB available")
