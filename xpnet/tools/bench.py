"""``xpnet bench``: xpnet against its PyTorch twin, measured in the same process.

For each batch size the two frameworks run the same ResNet-9 (same weights, same data) in
alternating rounds, so a noisy, shared machine slows both alike; the figures are medians over
rounds, after warm-up, with the GPU synchronised before every clock read. Reported per batch size:
train-step and eval images/s, their ratio to PyTorch, achieved GFLOP/s and its fraction of an
sgemm peak measured in the same run, and the peak memory of a train step (measured in a fresh
child process per framework, so neither sees the other's allocations).

    xpnet bench                       # batch 8, 64, 128 on NumPy vs torch CPU
    xpnet bench --backend cupy        # CuPy vs torch CUDA
    xpnet bench --profile             # where a train step's time goes, stage by stage, vs torch
    xpnet bench --smoke               # seconds: what CI runs
    xpnet bench --arch report2        # the second report's network, its recipe's step
    xpnet bench --backend cupy --dry-run   # kernel launches and host syncs per step, no GPU needed
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy

from xpnet import backend, nn
from xpnet.errors import XpnetError
from xpnet.cli.argtypes import OneLineParser, nonneg_int, positive_float, positive_int
from xpnet.functional import jit, parallel
from xpnet.models import build_model
from xpnet.tools.machine import blas_note, cpu_info, describe_cpu, load_note, passive_omp_wait
from xpnet.training.config import ARCHS, PRESETS, TrainConfig
from xpnet.training.runner import build_runner, train_step


def conv_flops(model, image_shape=(1, 28, 28)) -> int:
    """Forward multiply-adds x 2 of every Conv2d and Linear for one image.

    A Conv2d inside a fused block (ConvBlock, ConvReLU, ResidualReLU) is never called itself, so
    the block's input stands in for its convolutions' (a residual block's keep their shape).
    """
    from xpnet.functional.conv import output_size

    inputs = {}  # id(Conv2d or Linear) -> (module, input shape)
    hooked = []

    def wrap(m, *targets):
        orig = m.forward

        def forward(x):
            for target in targets:
                inputs[id(target)] = (target, x.shape)
            return orig(x)

        object.__setattr__(m, "forward", forward)
        hooked.append(m)

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            wrap(m, m)
        elif isinstance(m, (nn.ConvBlock, nn.ConvReLU)) and m.fused:
            wrap(m, m.layers[0])
        elif isinstance(m, nn.ResidualReLU) and m.fused:
            wrap(m, m.layers[0].layers[0], m.layers[0].layers[2])
    was_training = model.training
    model.eval()
    try:
        model(backend.xp().zeros((1, *image_shape), dtype=numpy.float32))
    finally:
        for m in hooked:
            object.__delattr__(m, "forward")
        model.train(was_training)
    total = 0
    for m, shape in inputs.values():
        if isinstance(m, nn.Conv2d):
            o, c, kh, kw = m.weight.shape
            ho = output_size(shape[2], kh, m.stride[0], m.padding[0], m.dilation[0])
            wo = output_size(shape[3], kw, m.stride[1], m.padding[1], m.dilation[1])
            total += 2 * o * c * kh * kw * ho * wo
        else:
            total += 2 * m.weight.data.size
    return total


def sgemm_peak(seconds=1.0) -> float:
    """Best float32 GEMM rate (GFLOP/s) of the current backend on square and conv-like shapes."""
    xp = backend.xp()
    rng = numpy.random.default_rng(0)
    best = 0.0
    for m, k, n in ((2048, 2048, 2048), (12544, 1152, 128), (6272, 1152, 256)):
        a = xp.asarray(rng.standard_normal((m, k), dtype=numpy.float32))
        b = xp.asarray(rng.standard_normal((k, n), dtype=numpy.float32))
        out = xp.empty((m, n), dtype=numpy.float32)
        xp.matmul(a, b, out=out)
        backend.synchronize()
        end = time.perf_counter() + seconds / 3
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            xp.matmul(a, b, out=out)
            backend.synchronize()
            best = max(best, 2 * m * k * n / (time.perf_counter() - t0) / 1e9)
    return best


def bench_config(width: float, batch: int, framework: str = "xpnet", arch: str = "resnet9") -> TrainConfig:
    """The run bench times at ``width`` and ``batch``: ``xpnet train``'s default recipe for
    ResNet-9, the ``report2`` preset (plain SGD, dropout 0.9, tie-sharing pools) for the second
    report's network."""
    recipe = dict(PRESETS["report2"], epochs=1) if arch == "report2" else {}
    return TrainConfig(**{**recipe, "width": width, "batch_size": batch, "framework": framework})


class Timed:
    """The runner ``fit`` runs for ``cfg`` (``build_runner``, its weights drawn from ``rng``, by
    default the run's seed) and one fixed batch of random images (B, 1, 28, 28) and labels from a
    generator of its own, so both frameworks get the same weights and the same batch.
    ``train_step`` is ``fit``'s step (``train_step``) at the recipe's peak rate; ``eval_step`` the
    model's eval-mode logits, read to the host."""

    def __init__(self, cfg: TrainConfig, rng=None, cuda_graph=False):
        rng = numpy.random.default_rng(cfg.seed) if rng is None else rng
        self.runner = build_runner(cfg, 10, rng)
        if cuda_graph:  # the train step replayed as a CUDA graph, as xpnet train --cuda-graph runs it
            self.runner.use_cuda_graph()
        self.model = self.runner.model
        self.lr = cfg.lr
        b, draw = cfg.batch_size, numpy.random.default_rng(cfg.seed + 1)
        self.x = backend.to_device(draw.standard_normal((b, 1, 28, 28)).astype(numpy.float32))
        self.y = backend.to_device(draw.integers(0, 10, b))

    def train_step(self):
        train_step(self.runner, self.x, self.y, self.lr)
        self.runner.synchronize()

    def eval_step(self):
        self.runner.logits(self.x)

    def synchronize(self):
        self.runner.synchronize()


def _time(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def _alternate(runners, what, rounds, steps):
    """Median seconds per call of runner.<what> for each runner, alternating in blocks.

    Each block starts with one untimed call: a library's worker threads keep spinning for a while
    after it returns and would steal the cores from the other library's first timed call.
    """
    samples = {name: [] for name in runners}
    for _ in range(rounds):
        for name, r in runners.items():
            fn = getattr(r, what)
            fn()
            samples[name].append(_time(fn, steps))
    return {name: statistics.median(s) for name, s in samples.items()}


# -- where a train step's time goes, stage by stage --------------------------------------------


def _profile_xpnet(runner, steps):
    """{(stage, "forward"|"backward"): seconds per step} for the model's top-level stages, and
    seconds per whole step."""
    times = collections.defaultdict(float)
    stages = list(runner.model._modules.items())
    for name, m in stages:
        for phase in ("forward", "backward"):
            call = getattr(m, phase)

            def timed(a, call=call, key=(name, phase)):
                t0 = time.perf_counter()
                out = call(a)
                backend.synchronize()
                times[key] += time.perf_counter() - t0
                return out

            object.__setattr__(m, phase, timed)
    try:
        total = _time(runner.train_step, steps)
    finally:
        for _, m in stages:
            object.__delattr__(m, "forward")
            object.__delattr__(m, "backward")
    return {k: v / steps for k, v in times.items()}, total


def _profile_torch(runner, steps):
    """As ``_profile_xpnet``, from module hooks. A stage's backward runs from the gradient
    reaching its output to the gradient leaving its input, so the first stage, whose input needs
    no gradient, reports none (its time counts in the rest)."""
    times = collections.defaultdict(float)
    started = {}

    def start(key):
        runner.synchronize()
        started[key] = time.perf_counter()

    def stop(key):
        runner.synchronize()
        times[key] += time.perf_counter() - started.pop(key)

    handles = []
    for i, (name, m) in enumerate(runner.model.named_children()):
        f, b = (name, "forward"), (name, "backward")
        handles += [
            m.register_forward_pre_hook(lambda mod, inp, f=f: start(f)),
            m.register_forward_hook(lambda mod, inp, out, f=f: stop(f)),
        ]
        if i > 0:
            handles += [
                m.register_full_backward_pre_hook(lambda mod, gout, b=b: start(b)),
                m.register_full_backward_hook(lambda mod, gin, gout, b=b: stop(b)),
            ]
    try:
        total = _time(runner.train_step, steps)
    finally:
        for h in handles:
            h.remove()
    return {k: v / steps for k, v in times.items()}, total


def profile(runners, steps):
    """Per-stage milliseconds of a train step for each runner, rows in the model's order:
    [(stage, phase, {runner: ms or None})], with a last row for everything else (loss,
    optimizer, hooks' own cost) and one for the whole step."""
    results = {}
    for name, r in runners.items():
        r.train_step()
        results[name] = (_profile_torch if name == "torch" else _profile_xpnet)(r, steps)
    order = [(n, "forward") for n in runners["xpnet"].model._modules]
    order += [(n, "backward") for n in reversed(runners["xpnet"].model._modules)]
    def ms(times, key):
        return times[key] * 1e3 if key in times else None

    rows = [(n, ph, {k: ms(t, (n, ph)) for k, (t, _) in results.items()}) for n, ph in order]
    rows.append(("rest", "", {k: (total - sum(t.values())) * 1e3 for k, (t, total) in results.items()}))
    rows.append(("step", "", {k: total * 1e3 for k, (_, total) in results.items()}))
    return rows


def profile_markdown(batch, rows) -> str:
    names = list(rows[-1][2])
    head = ["stage", "phase"] + [f"{n} ms" for n in names] + (["xpnet / torch"] if "torch" in names else [])
    lines = [f"train step at batch {batch}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for stage, phase, ms in rows:
        cells = [stage, phase] + ["-" if ms[n] is None else f"{ms[n]:.1f}" for n in names]
        if "torch" in names:
            ok = ms["xpnet"] is not None and ms["torch"]
            cells.append(f"{ms['xpnet'] / ms['torch']:.2f}" if ok else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# -- peak memory, one child process per framework ---------------------------------------------


def _rss_kib(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _probe(framework, width, batch, backend_name, arch="resnet9", steps=3):
    """Run in a child: peak resident (CPU) or pool (GPU) memory of train steps, in MiB."""
    backend.use(backend_name)
    runner = Timed(bench_config(width, batch, framework, arch))
    if backend_name == "cupy":
        runner.train_step()
        if framework == "torch":
            import torch

            torch.cuda.reset_peak_memory_stats()
            for _ in range(steps):
                runner.train_step()
            return torch.cuda.max_memory_allocated() / 2**20
        for _ in range(steps):
            runner.train_step()
        return backend.memory_pool_bytes() / 2**20
    if framework == "xpnet":
        # The compiled loops' code (Numba and LLVM, some 60 MiB resident) loads once per process,
        # like torch's libraries on its import: before the baseline, not inside the steps.
        jit.warm_up("float32")
    before = _rss_kib("VmRSS")
    try:  # Linux: reset the high-water mark so it covers the steps alone
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    for _ in range(steps):
        runner.train_step()
    peak = _rss_kib("VmHWM")
    if before is None or peak is None:
        return float("nan")
    return (peak - before) / 1024


def peak_memory_mib(framework, width, batch, backend_name, threads, arch="resnet9"):
    cmd = [sys.executable, "-m", "xpnet.tools.bench", "--_probe", framework, str(width), str(batch), backend_name,
           arch]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), XPNET_THREADS=str(threads))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        return float("nan")
    return float(out.stdout.strip().splitlines()[-1])


# -- the command -------------------------------------------------------------------------------


def run(args) -> dict:
    backend.use(args.backend)
    wait_policy = passive_omp_wait()  # before torch starts its OpenMP threads
    note = load_note()
    if note:
        print(f"xpnet bench: warning: {note}", file=sys.stderr, flush=True)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None and not args.no_torch:
        raise SystemExit("xpnet bench: error: PyTorch is needed for the comparison (pip install 'xpnet[test]'), "
                         "or pass --no-torch")
    device = "cuda" if args.backend == "cupy" else "cpu"
    if torch is not None and not args.no_torch and device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("xpnet bench: error: torch has no CUDA here; pass --no-torch to time CuPy alone")

    from threadpoolctl import threadpool_info, threadpool_limits

    threads = args.threads or os.cpu_count()
    limiter = threadpool_limits(limits=threads)
    previous_kernel_threads = parallel.set_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    # The compiled loops are compiled (first run) or loaded from Numba's cache here, before any
    # timing, and the seconds are reported on their own line.
    jit_seconds, jit_compiled = jit.warm_up("float32") if args.backend == "numpy" else (0.0, 0)
    peak = sgemm_peak(0.5 if args.smoke else 2.0)
    flops_fwd = conv_flops(build_model(bench_config(args.width, 1, arch=args.arch).model_config(), 10, 0))
    rows = []
    for batch in args.batch_sizes:
        rows.append(_batch_row(args, batch, torch, flops_fwd, peak, threads))
        if not args.profile:
            print(_format_row(rows[-1]), flush=True)
    limiter.restore_original_limits()
    kernel_threads = parallel.set_threads(previous_kernel_threads)  # the count the run used
    return dict(
        backend=args.backend,
        device=device,
        cuda_graph=args.cuda_graph,
        arch=args.arch,
        width=args.width,
        threads=threads,
        kernel_threads=kernel_threads,
        blas=[{k: i.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
              for i in threadpool_info()],
        cpu=cpu_info(),
        torch=None if torch is None else torch.__version__,
        omp_wait_policy=None if torch is None or args.no_torch else wait_policy,
        load_average=_load_average(),
        numpy=numpy.__version__,
        machine=platform.processor() or platform.machine(),
        sgemm_peak_gflops=peak,
        jit=jit.describe() if args.backend == "numpy" else None,
        jit_seconds=jit_seconds,
        jit_compiled=jit_compiled,
        train_gflop_per_image=3 * flops_fwd / 1e9,
        rows=rows,
    )


def _batch_row(args, batch, torch, flops_fwd, peak, threads) -> dict:
    """One batch size's row: both frameworks' rates, ratios and memory (or its profile)."""
    runners = {"xpnet": Timed(bench_config(args.width, batch, arch=args.arch), cuda_graph=args.cuda_graph)}
    if torch is not None and not args.no_torch:
        runners["torch"] = Timed(bench_config(args.width, batch, "torch", args.arch))
    for r in runners.values():  # warm-up: allocator pools, BLAS buffers, cuDNN autotuning
        for _ in range(args.warmup):
            r.train_step()
            r.eval_step()
    if args.profile:
        return dict(batch=batch, profile=profile(runners, args.rounds * args.steps))
    train = _alternate(runners, "train_step", args.rounds, args.steps)
    evals = _alternate(runners, "eval_step", args.rounds, args.steps)
    row = dict(batch=batch)
    for name in runners:
        row[f"{name}_train_ips"] = batch / train[name]
        row[f"{name}_eval_ips"] = batch / evals[name]
        row[f"{name}_train_gflops"] = 3 * flops_fwd * batch / train[name] / 1e9
        row[f"{name}_train_peak_fraction"] = row[f"{name}_train_gflops"] / peak
        if not args.no_memory:
            row[f"{name}_peak_mib"] = peak_memory_mib(name, args.width, batch, args.backend, threads, args.arch)
    if "torch" in runners:
        row["train_ratio"] = row["xpnet_train_ips"] / row["torch_train_ips"]
        row["eval_ratio"] = row["xpnet_eval_ips"] / row["torch_eval_ips"]
    return row


def _load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _format_row(r):
    parts = [f"batch {r['batch']:>4}"]
    parts.append(f"train {r['xpnet_train_ips']:7.1f} img/s")
    if "torch_train_ips" in r:
        parts.append(f"(torch {r['torch_train_ips']:7.1f}, ratio {r['train_ratio']:.2f})")
    parts.append(f"eval {r['xpnet_eval_ips']:7.1f} img/s")
    if "torch_eval_ips" in r:
        parts.append(f"(torch {r['torch_eval_ips']:7.1f}, ratio {r['eval_ratio']:.2f})")
    parts.append(f"{r['xpnet_train_gflops']:.0f} GFLOP/s = {r['xpnet_train_peak_fraction']:.0%} of sgemm peak")
    return "  ".join(parts)


def _jit_lines(result):
    """The CPU kernels' elementwise path, and what compiling it cost (kept out of the timings)."""
    if not result.get("jit"):
        return []
    line = f"CPU loops: {result['jit']}"
    if result.get("jit_seconds"):
        how = (f"compiled {result['jit_compiled']} loops" if result.get("jit_compiled")
               else "loaded from Numba's cache")
        line += f"; {how} in {result['jit_seconds']:.1f} s before timing (not in the figures below)"
    return [line, ""]


_ARCH_NAMES = {"resnet9": "ResNet-9, default recipe", "report2": "second report's network (report2 preset)"}


def markdown(result) -> str:
    if any("profile" in r for r in result["rows"]):
        return "\n".join(profile_markdown(r["batch"], r["profile"]) for r in result["rows"])
    has_torch = any("torch_train_ips" in r for r in result["rows"])
    has_mem = any("xpnet_peak_mib" in r for r in result["rows"])
    head = ["batch", "xpnet train img/s"]
    if has_torch:
        head += ["torch train img/s", "train ratio"]
    head += ["xpnet eval img/s"]
    if has_torch:
        head += ["torch eval img/s", "eval ratio"]
    head += ["xpnet GFLOP/s", "of sgemm peak"]
    if has_torch:
        head += ["torch of peak"]
    if has_mem:
        head += ["xpnet peak MiB"] + (["torch peak MiB"] if has_torch else [])
    blas = ", ".join(f"{b['internal_api']} {b['version']} ({b['architecture']} kernels)"
                     for b in result.get("blas", []) if b.get("architecture"))
    lines = [
        f"CPU: {describe_cpu(result['cpu'])}" if "cpu" in result else f"CPU: {result['machine']}",
        "",
        f"{_ARCH_NAMES[result.get('arch', 'resnet9')]}, "
        f"backend {result['backend']} ({result['machine']}{', ' + blas if blas else ''}), width {result['width']}, "
        f"{result['threads']} threads, "
        f"sgemm peak {result['sgemm_peak_gflops']:.0f} GFLOP/s, {result['train_gflop_per_image']:.2f} GFLOP per "
        f"training image, torch {result['torch']}, numpy {result['numpy']}",
        "",
        *([f"PyTorch's OpenMP wait policy: {result['omp_wait_policy']}; load average at the end "
           f"{result.get('load_average')}", ""] if result.get("omp_wait_policy") else []),
        *_jit_lines(result),
        "GFLOP/s count a direct convolution's multiply-adds; xpnet's Winograd layers do 2.25x (F(2x2, 3x3)) "
        "or 4x (F(4x4, 3x3)) fewer, so its rate is an effective one and may pass the sgemm peak.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in result["rows"]:
        cells = [str(r["batch"]), f"{r['xpnet_train_ips']:.1f}"]
        if has_torch:
            cells += [f"{r['torch_train_ips']:.1f}", f"{r['train_ratio']:.2f}"]
        cells += [f"{r['xpnet_eval_ips']:.1f}"]
        if has_torch:
            cells += [f"{r['torch_eval_ips']:.1f}", f"{r['eval_ratio']:.2f}"]
        cells += [f"{r['xpnet_train_gflops']:.0f}", f"{r['xpnet_train_peak_fraction']:.0%}"]
        if has_torch:
            cells += [f"{r['torch_train_peak_fraction']:.0%}"]
        if has_mem:
            cells += [f"{r['xpnet_peak_mib']:.0f}"] + ([f"{r['torch_peak_mib']:.0f}"] if has_torch else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default, except a switch's False and an unset None."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def build_parser():
    # The module docstring's first paragraph without its reST markup.
    p = OneLineParser(prog="xpnet bench", description=__doc__.split("\n\n")[0].replace("``", ""),
                      formatter_class=_HelpFormatter)
    p.add_argument("--backend", choices=backend.BACKENDS, default="numpy", help="array backend")
    p.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[8, 64, 128], help="batch sizes to time")
    p.add_argument("--arch", choices=ARCHS, default="resnet9",
                   help="network: ResNet-9 on the default recipe, or the second report's on its preset")
    p.add_argument("--width", type=positive_float, default=1.0, help="channel multiplier of the model")
    p.add_argument("--threads", type=nonneg_int, default=0,
                   help="threads for BLAS, torch and the xpnet kernels (0: all cores)")
    p.add_argument("--rounds", type=positive_int, default=5, help="alternating rounds; the median is reported")
    p.add_argument("--steps", type=positive_int, default=3, help="steps per round")
    p.add_argument("--warmup", type=nonneg_int, default=2, help="untimed steps per framework first")
    p.add_argument("--no-torch", action="store_true", help="time xpnet alone")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    p.add_argument("--profile", action="store_true",
                   help="instead of throughput, time each stage's forward and backward in a train step")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for bench.json and bench.md")
    p.add_argument("--smoke", action="store_true", help="tiny and quick: batch 2, width 1/8, one round")
    p.add_argument("--cuda-graph", action="store_true",
                   help="with --backend cupy: time xpnet's train step replayed as one CUDA graph "
                   "(as xpnet train --cuda-graph runs it)")
    p.add_argument("--dry-run", action="store_true",
                   help="with --backend cupy: count kernel launches and host syncs per step on a fake "
                        "device, beside the PyTorch twin's, instead of timing (no GPU needed)")
    # FRAMEWORK WIDTH BATCH BACKEND [ARCH]: the memory probe's child (ResNet-9 without ARCH)
    p.add_argument("--_probe", nargs="+", help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args._probe:
        framework, width, batch, backend_name, *arch = args._probe
        print(_probe(framework, float(width), int(batch), backend_name, *arch[:1]))
        return 0
    if args.smoke:
        args.batch_sizes, args.width, args.rounds, args.steps, args.warmup = [2], 0.125, 1, 1, 1
    if min(args.batch_sizes) < 1 or args.width <= 0 or args.rounds < 1 or args.steps < 1 or args.threads < 0:
        print("xpnet bench: error: batch sizes, width, rounds and steps must be positive", file=sys.stderr)
        return 2
    if args.cuda_graph and args.backend != "cupy":
        print("xpnet bench: error: --cuda-graph replays the step on a GPU: it needs --backend cupy", file=sys.stderr)
        return 2
    if args.dry_run and args.arch != "resnet9":
        print("xpnet bench: error: --dry-run counts ResNet-9's launches only: leave out --arch", file=sys.stderr)
        return 2
    if args.dry_run:
        return _dry_run(args)
    try:
        with backend.device_errors():
            result = run(args)
    except XpnetError as e:
        print(f"xpnet bench: error: {e}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (args.out / "bench.md").write_text(md)
    note = blas_note(result["cpu"], result["blas"]) if args.backend == "numpy" else None
    if note:
        print(note)
    print()
    print(md)
    print(f"written: {args.out / 'bench.json'}, {args.out / 'bench.md'}")
    return 0


def _dry_run(args) -> int:
    from xpnet.tools import launches

    if args.backend != "cupy":
        print("xpnet bench: error: --dry-run counts the device path: pass --backend cupy", file=sys.stderr)
        return 2
    result = launches.run(args.width, args.batch_sizes, torch=not args.no_torch)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "launches.json").write_text(json.dumps(result, indent=2) + "\n")
    md = launches.markdown(result)
    (args.out / "launches.md").write_text(md)
    print(md)
    print(f"written: {args.out / 'launches.json'}, {args.out / 'launches.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
