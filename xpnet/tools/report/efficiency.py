"""The efficiency table: a sample of training steps and evaluation batches of the report's job,
timed on every framework and backend present here, projected to the report's epochs."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time

import numpy

from xpnet import backend


def time_steps(cfg, data, steps, eval_batches, warmup) -> dict:
    """Mean seconds of a training step and of an evaluation batch of ``cfg``'s run on its framework
    and the current backend.

    The clock is read after a ``synchronize``; ``warmup`` untimed steps come first (PyTorch's
    first dozen steps on new shapes run several times slower than the rest).
    """
    from xpnet.data import batches, center_crop
    from xpnet.training.runner import build_runner, build_schedule, train_step

    cfg = cfg.for_data(data.image_shape)
    rng = numpy.random.default_rng(cfg.seed)
    runner = build_runner(cfg, 10, rng)
    schedule = build_schedule(cfg, math.ceil(len(data.train_labels) / cfg.batch_size))
    n = (steps + warmup) * cfg.batch_size
    images, labels = backend.to_device(data.train_images[:n]), backend.to_device(data.train_labels[:n])
    it = batches(images, labels, cfg.batch_size, rng, shuffle=True, augment=cfg.augment, drop_last=True,
                 inputs=cfg.inputs, crop=cfg.crop)
    times = []
    for i, (x, y) in enumerate(it):
        runner.synchronize()
        t0 = time.perf_counter()
        train_step(runner, x, y, schedule(runner.steps))  # fit's step
        runner.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    m = min(len(data.test_labels), eval_batches * cfg.eval_batch_size)
    test_images = backend.to_device(center_crop(data.test_images[:m], cfg.crop))
    test_labels = backend.to_device(data.test_labels[:m])
    runner.evaluate(test_images[: cfg.eval_batch_size], test_labels[: cfg.eval_batch_size], cfg.eval_batch_size)
    runner.synchronize()
    t0 = time.perf_counter()
    runner.evaluate(test_images, test_labels, cfg.eval_batch_size)
    runner.synchronize()
    eval_seconds = (time.perf_counter() - t0) / math.ceil(m / cfg.eval_batch_size)
    return dict(step_seconds=statistics.fmean(times), steps=len(times), eval_batch_seconds=eval_seconds,
                eval_batches=math.ceil(m / cfg.eval_batch_size), warmup=warmup)


def efficiency(cfg, data, steps, eval_batches, epochs, train_images, test_images, log) -> dict:
    """Projected seconds of ``epochs`` epochs (``train_images`` steps' worth each, and one
    evaluation of ``test_images``) on every framework and backend that is present here."""
    targets = (("xpnet", "numpy"), ("torch", "numpy"), ("xpnet", "cupy"), ("torch", "cupy"))
    rows = {}
    for framework, backend_name in targets:
        key = f"{framework}-{'cpu' if backend_name == 'numpy' else 'gpu'}"
        why = _unavailable(framework, backend_name)
        if why:
            log(f"efficiency {key}: not measured: {why}")
            rows[key] = dict(measured=False, why=why)
            continue
        log(f"efficiency {key}: timing {steps} training steps and {eval_batches} evaluation batches")
        with backend.using(backend_name):
            t = time_steps(dataclasses.replace(cfg, framework=framework), data, steps, eval_batches,
                           warmup=10 if steps >= 20 else 2)
        per_epoch = (math.ceil(train_images / cfg.batch_size) * t["step_seconds"]
                     + math.ceil(test_images / cfg.eval_batch_size) * t["eval_batch_seconds"])
        rows[key] = dict(measured=True, projected_seconds=epochs * per_epoch, **t)
    return rows


def efficiency_table(job, full, steps, eval_batches, epochs, log) -> dict:
    """The efficiency rows of ``job`` projected to ``epochs`` epochs, with how they were made."""
    rows = efficiency(job, full, steps, eval_batches, epochs, len(full.train_labels), len(full.test_labels), log)
    return dict(
        rows=rows, epochs=epochs, steps=steps, eval_batches=eval_batches, warmup=10 if steps >= 20 else 2,
        job=f"{'full width' if job.width == 1.0 else f'width {job.width:g}'}, batch {job.batch_size}, "
            f"evaluation batch {job.eval_batch_size}, SGD",
        train_steps_per_epoch=math.ceil(len(full.train_labels) / job.batch_size),
        eval_batches_per_epoch=math.ceil(len(full.test_labels) / job.eval_batch_size),
    )


def _unavailable(framework, backend_name) -> str | None:
    if framework == "torch":
        try:
            from xpnet.reference import runner
        except ImportError as e:
            return str(e)
        if backend_name == "cupy" and not runner.cuda_available():
            return "torch has no CUDA device here"
    if backend_name == "cupy":
        try:
            with backend.using("cupy"):
                pass
        except backend.BackendError as e:
            return str(e)
    return None
