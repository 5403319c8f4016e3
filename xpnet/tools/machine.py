"""The machine a measurement ran on, as xpnet's tables name it: the CPU model, the cores this
process may use, the CPU flags that choose BLAS and oneDNN kernels, and any ``OPENBLAS_*``
setting, plus a note when that setting holds OpenBLAS below what the CPU can run."""

from __future__ import annotations

import os
import platform

from xpnet.functional import parallel

# CPU features that decide which kernels BLAS libraries and PyTorch's oneDNN pick.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_info() -> dict:
    """The machine's CPU as the tables report it: model name, the cores this process may use, the
    flags of ``CPU_FLAGS`` it has, and any ``OPENBLAS_*`` settings in the environment (they can
    pin OpenBLAS to another core type's kernels)."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return dict(
        model=model or platform.processor() or platform.machine(),
        cores=parallel.cpu_count(),
        flags=[f for f in CPU_FLAGS if f in flags],
        openblas_env={k: v for k, v in sorted(os.environ.items()) if k.startswith("OPENBLAS_")},
    )


def describe_cpu(cpu) -> str:
    """One line: 'AMD EPYC, 2 cores, avx2 fma avx512f; OPENBLAS_CORETYPE=Haswell'."""
    text = f"{cpu['model']}, {cpu['cores']} cores"
    if cpu.get("flags"):
        text += ", " + " ".join(cpu["flags"])
    env = cpu.get("openblas_env") or {}
    if env:
        text += "; " + " ".join(f"{k}={v}" for k, v in env.items())
    return text


# OpenBLAS kernel sets that use AVX-512 (the names threadpoolctl reports as "architecture").
_AVX512_KERNELS = {"skylakex", "cooperlake", "sapphirerapids"}


def blas_note(cpu=None, blas=None):
    """A one-line note when OpenBLAS has been pinned, by ``OPENBLAS_CORETYPE``, to kernels older
    than the CPU (AVX2 ones on an AVX-512 CPU): every GEMM of xpnet's NumPy path then runs at up
    to half the speed the machine has. None otherwise (PyTorch brings its own kernels)."""
    cpu = cpu_info() if cpu is None else cpu
    if blas is None:
        try:
            from threadpoolctl import threadpool_info
        except ImportError:
            return None
        blas = threadpool_info()
    pinned = cpu.get("openblas_env", {}).get("OPENBLAS_CORETYPE")
    if not pinned or "avx512f" not in cpu.get("flags", ()):
        return None
    for lib in blas:
        arch = str(lib.get("architecture") or "")
        if lib.get("internal_api") == "openblas" and arch and arch.lower() not in _AVX512_KERNELS:
            return (f"note: OpenBLAS runs its {arch} kernels (OPENBLAS_CORETYPE={pinned}) on a CPU with "
                    "AVX-512; unset OPENBLAS_CORETYPE for faster GEMMs")
    return None


def passive_omp_wait() -> str:
    """Let PyTorch's OpenMP threads sleep while they wait for work, unless the user chose.

    By default they spin; on a machine where other work runs, spinning threads take the cores
    that the threads with work need, and PyTorch's figures fall many times below what the same
    machine gives it unloaded (issue 19: a bench ratio of 38.5 became 0.95). OpenMP reads
    ``OMP_WAIT_POLICY`` once, when torch's library loads, so call this before importing torch.
    Sets ``OMP_WAIT_POLICY=PASSIVE`` unless the variable is set. -> the policy as the tables name
    it: 'PASSIVE (set by xpnet)', 'ACTIVE (OMP_WAIT_POLICY)', with a note if torch had already
    started under another one.
    """
    import sys

    given = os.environ.get("OMP_WAIT_POLICY")
    if given:
        return f"{given.upper()} (OMP_WAIT_POLICY)"
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if "torch" in sys.modules:  # too late for this process: its OpenMP runtime has read the default
        return "ACTIVE (torch was loaded before xpnet could set PASSIVE)"
    return "PASSIVE (set by xpnet)"


def load_note(cores=None, load=None):
    """A one-line warning when the machine's 1-minute load average says other work is running
    (timings are then noisy and the slower side is starved), else None."""
    cores = parallel.cpu_count() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (OSError, AttributeError):  # not every system keeps one
            return None
    if load <= max(1.0, 0.5 * cores):
        return None
    return (f"the load average is {load:.1f} on {cores} cores: other work is running, so these timings "
            "are noisy and lower than the machine gives an idle run")
