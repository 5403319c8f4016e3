"""Data-parallel training over MPI: the one module that knows about ranks and imports mpi4py.

``mpiexec -n N xpnet train ...`` starts N processes (ranks) that train one model together. Each
rank builds the same global batch from the same host random generator (same shuffle, same
augmentation, and dropout masks drawn for the whole batch: ``draw_rows``) and takes its own
contiguous slice of it; the loss gradient is scaled by ``slice / global batch``, so the sum of
the ranks' gradients is the gradient of the global batch, formed by one in-place Allreduce of a
flat buffer that every ``Parameter.grad`` is a view of. Rank 0 reads checkpoints (the contents
are broadcast) and alone writes files.

BatchNorm sees this rank's slice (as PyTorch DDP does) unless ``sync_bn``: then every BatchNorm
adds its per-channel sums up over the ranks through one hook, ``reduce_sums``, and the ranks
compute what one process computes at the same global batch, up to the order of floating-point
additions. Without sync-BN the running statistics of rank 0 are the ones kept (broadcast before
each evaluation), as DDP's ``broadcast_buffers`` does.

The contract ``train.fit`` relies on is a communicator: ``Solo`` for one process (every method
a no-op or the identity, so ``fit`` has no ``if mpi`` branches) and ``MPIWorld`` for N ranks,
both built by ``world()``. Primitives: ``rank``, ``size``, ``allreduce_(flat)`` (in-place sum),
``bcast(obj)`` (a picklable object from rank 0), ``allgather(obj)``, ``reduce_sums(a)``,
``barrier()``, ``abort()``. On these rest the training helpers ``fit`` calls (``start``,
``shard``, ``loss``, ``sync_grads``, ``any``, ``sums``, ``settle``, ``evaluate``,
``from_root``).

A rank that stops answering (killed without a word, stopped with SIGSTOP, swapped out, hung)
would leave the others waiting in a collective forever, rank 0 spinning at full CPU. A watchdog
thread in every rank ends the job in one line once a collective has waited ``XPNET_MPI_TIMEOUT``
seconds (default 300; 0 waits forever). The only long waits that are not a fault, rank 0
downloading or writing while the others wait, are outside its watch or far shorter.

CuPy arrays are staged through host memory, which works with any MPI; a CUDA-aware MPI or NCCL
(``cupy.cuda.nccl``) would replace ``allreduce_`` and ``reduce_sums`` alone. Untested on a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy

from xpnet import __version__, backend
from xpnet.errors import XpnetError

# Environment variables that MPI launchers set in every process they start, giving the world
# size without initialising MPI: MPICH/Hydra and Intel MPI, Open MPI, MVAPICH. XPNET_MPI=1 forces
# MPI for a launcher that sets none of them.
# How long a collective may wait for the other ranks before the job is ended (seconds).
DEFAULT_TIMEOUT = 300.0

SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


class DistributedError(XpnetError, RuntimeError):
    """A launch that cannot train, found alike on every rank; ``rank`` 0 reports it."""

    def __init__(self, message, rank=0):
        super().__init__(message)
        self.rank = rank


def _env_int(names):
    for name in names:
        value = os.environ.get(name)
        if value:
            try:
                return int(value)
            except ValueError:
                pass
    return None


def launched_size() -> int:
    """The number of ranks the launcher started, from its environment (1 when not launched)."""
    size = _env_int(SIZE_VARIABLES)
    if size is None and os.environ.get("XPNET_MPI") == "1":
        return 0  # unknown: ask MPI
    return 1 if size is None else size


def world():
    """The communicator of this process: ``Solo`` unless started by an MPI launcher."""
    size = launched_size()
    if size == 1:
        return Solo()
    try:
        from mpi4py import MPI
    except ImportError:
        raise DistributedError(
            f"this process is one of {size or 'several'} MPI ranks, but mpi4py is not installed: "
            "pip install 'xpnet[mpi]'",
            rank=_env_int(RANK_VARIABLES) or 0,
        ) from None
    timeout = mpi_timeout(rank=_env_int(RANK_VARIABLES) or 0)
    comm = MPIWorld(MPI)
    if comm.size == 1:
        return Solo()
    comm.share_cores()
    comm.watch(timeout)
    backend.bind_local_rank(comm.local_rank)  # one GPU per rank on a machine with several
    return comm


def mpi_timeout(rank=0) -> float:
    """Seconds a collective may wait (``XPNET_MPI_TIMEOUT``, default ``DEFAULT_TIMEOUT``; 0 for
    no limit); a value that is not a finite non-negative number is a DistributedError."""
    text = os.environ.get("XPNET_MPI_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 and value < float("inf")):
        raise DistributedError(
            f"XPNET_MPI_TIMEOUT must be a number of seconds (0 for no limit), got {text!r}", rank=rank
        )
    return value


def fingerprint(cfg) -> str:
    """A digest of xpnet's version, its source files and the run's config: ranks that disagree
    would not train one model."""
    h = hashlib.sha256(__version__.encode())
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    h.update(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
    h.update(backend.name().encode())
    return h.hexdigest()[:16]


def _slice(n, size, rank):
    """[lo, hi) of rank's share of n items in contiguous, near-equal slices (sizes differ by one
    at most, the larger ones first)."""
    q, r = divmod(n, size)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (rank < r)


class Communicator:
    """The training helpers, written once over the primitives that ``Solo`` and ``MPIWorld``
    provide."""

    rank = 0
    size = 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    # -- primitives (one process: identities) --------------------------------------------------

    def allreduce_(self, flat) -> None:
        """flat: 1-D contiguous array, replaced in place by its sum over ranks."""

    def reduce_sums(self, a):
        """The BatchNorm hook: a 1-D float64 array -> its sum over ranks."""
        return a

    def bcast(self, obj):
        return obj

    def allgather(self, obj) -> list:
        return [obj]

    def barrier(self) -> None:
        pass

    def abort(self, code=1) -> None:
        sys.exit(code)

    # -- training helpers ----------------------------------------------------------------------

    def start(self, model, cfg) -> None:
        """Before the first step: agree on code and config, broadcast rank 0's weights and
        buffers, install the sync-BN hook and the flat gradient buffer."""

    def shard(self, batches):
        """Global batches (x, y) -> this rank's slices, one per global batch."""
        return batches

    def loss(self, loss_fn):
        """``loss_fn`` reporting the global batch's mean loss, its gradient scaled for the sum
        over ranks."""
        return loss_fn

    def sync_grads(self) -> None:
        """Every ``Parameter.grad`` <- its sum over ranks (after backward, before the step)."""

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on one (stop requests)."""
        return bool(flag)

    def sums(self, *values):
        """Python numbers summed over ranks (epoch totals)."""
        return values

    def settle(self, model) -> None:
        """Before evaluation and checkpoints: rank 0's buffers everywhere, and a check that the
        ranks hold the same weights."""

    def evaluate(self, evaluate, model, images, labels, batch_size):
        """``train.evaluate`` over this rank's slice of the test set, gathered on every rank."""
        return evaluate(model, images, labels, batch_size)

    def from_root(self, fn, *args):
        """``fn(*args)`` run on rank 0 alone, its result (or exception) on every rank."""
        return fn(*args)

    def root_first(self, fn, *args):
        """``fn(*args)`` on rank 0, then on the others (rank 0 downloads, the others read)."""
        return fn(*args)

    def guard(self, prog, expected=()):
        """A context in which an error on one rank ends the whole job (no hang): one line for
        the ``expected`` error classes, a traceback before it for the others."""
        return contextlib.nullcontext()


class Solo(Communicator):
    """One process: the whole batch, no communication."""


class MPIWorld(Communicator):
    """N ranks of ``MPI.COMM_WORLD`` (mpi4py)."""

    def __init__(self, MPI):
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.buckets = []
        self._scale, self._rows = 1.0, None  # the batch being trained: its share, (n, lo, hi)
        self._waiting = None  # (what, since) while in a watched collective
        self._nccl = None  # the NCCL sum of device arrays, once set up (False: none)
        self.local_rank = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()

    def watch(self, timeout: float, prog: str = "xpnet train") -> None:
        """Start the watchdog: a collective that waits more than ``timeout`` seconds ends the
        job with one line. The other ranks wait a few seconds longer than rank 0, so that when
        every live rank is stuck, rank 0 alone reports."""
        if not timeout:
            return
        limit = timeout + (0.0 if self.is_root else 5.0)
        thread = threading.Thread(target=self._watchdog, args=(limit, timeout, prog), daemon=True,
                                  name="xpnet-mpi-watchdog")
        thread.start()

    def _watchdog(self, limit, timeout, prog):
        poll = min(1.0, limit / 4)
        while True:
            time.sleep(poll)
            waiting = self._waiting
            if waiting is None or time.monotonic() - waiting[1] < limit:
                continue
            print(
                f"{prog}: error: rank {self.rank} of {self.size} waited {limit:.0f} s in {waiting[0]} for "
                f"a rank that stopped answering (killed, stopped or hung); ending the job "
                f"(XPNET_MPI_TIMEOUT={timeout:g} sets the wait)",
                file=sys.stderr, flush=True,
            )
            self.abort(1)

    @contextlib.contextmanager
    def _collective(self, what):
        self._waiting = (what, time.monotonic())
        try:
            yield
        finally:
            self._waiting = None

    def share_cores(self):
        """Ranks on one host split its cores (unless XPNET_THREADS says otherwise); one kernel
        thread means one BLAS thread too, so N ranks never run N x cores threads."""
        from xpnet.functional import parallel

        local = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED).Get_size()
        if not os.environ.get("XPNET_THREADS"):
            parallel.set_threads(max(1, parallel.threads() // local))
        if parallel.threads() == 1:
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:
                return
            self._blas_limit = threadpool_limits(1, user_api="blas")

    # -- primitives ----------------------------------------------------------------------------

    def allreduce_(self, flat):
        if backend.is_cupy_array(flat) and flat.flags.c_contiguous and self._device_sum():
            with self._collective("an NCCL allreduce"):
                self._nccl(flat)  # on the GPUs: no copy to the host and back
            return
        with self._collective("an allreduce"):
            if backend.is_cupy_array(flat):
                host = backend.asnumpy(flat)
                self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
                flat[...] = backend.to_device(host)
            else:
                self.comm.Allreduce(self.MPI.IN_PLACE, flat, op=self.MPI.SUM)

    def _device_sum(self) -> bool:
        """Whether device arrays are summed by NCCL: set up at the first device allreduce, which
        every rank reaches together, if every rank has NCCL (else through the host, by MPI)."""
        if self._nccl is None:
            everywhere = all(self.allgather(backend.nccl_available()))
            self._nccl = backend.nccl_allreduce(self.size, self.rank, self.bcast) if everywhere else False
        return bool(self._nccl)

    def reduce_sums(self, a):
        self.allreduce_(a)
        return a

    def bcast(self, obj):
        with self._collective("a broadcast"):
            return self.comm.bcast(obj, root=0)

    def allgather(self, obj):
        with self._collective("an allgather"):
            return self.comm.allgather(obj)

    def barrier(self):
        with self._collective("a barrier"):
            self.comm.Barrier()

    def abort(self, code=1):
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(0.5)  # the launcher forwards our output asynchronously and stops at the abort
        self.comm.Abort(code)
        # MPICH's MPI_Abort can return once the process manager has been told, leaving this rank
        # running until it is killed: it must not go on to train or write anything.
        os._exit(code)

    # -- training helpers ----------------------------------------------------------------------

    def start(self, model, cfg):
        prints = self.allgather(fingerprint(cfg))
        if len(set(prints)) > 1:
            odd = [r for r, p in enumerate(prints) if p != prints[0]]
            raise DistributedError(
                f"ranks {odd} run a different xpnet version or config than rank 0 "
                f"(fingerprints {prints[odd[0]]} and {prints[0]}); launch one version with one set of flags",
                self.rank,
            )
        if cfg.batch_size < self.size:
            raise DistributedError(
                f"--batch-size {cfg.batch_size} is smaller than the {self.size} ranks: every rank "
                "needs at least one image of each batch",
                self.rank,
            )
        state = self.bcast({k: backend.asnumpy(v) for k, v in model.state_dict().items()} if self.is_root else None)
        model.load_state_dict(state)
        from xpnet import nn

        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and getattr(cfg, "sync_bn", False):
                m.reduce_sums = self.reduce_sums
            if isinstance(m, nn.Dropout):
                m.draw_rows = self.draw_rows
        self.buckets = _flat_grads(model.parameters())

    def shard(self, batches):
        for x, y in batches:
            n = len(y)
            if n < self.size:
                continue  # a last batch smaller than the world: no rank may go without images
            lo, hi = _slice(n, self.size, self.rank)
            self._scale, self._rows = (hi - lo) / n, (n, lo, hi)
            yield x[lo:hi], y[lo:hi]

    def draw_rows(self, rng, shape, dtype, seed=None):
        """Dropout's samples for this rank's rows (shape (hi - lo, ...)) of the global batch
        being trained: drawn for all n of its rows and sliced, so every rank's generator moves
        alike (the ranks shuffle the next epoch alike, a checkpoint's one state resumes them all)
        and the masks are those one process draws."""
        n, lo, hi = self._rows or (shape[0], 0, 0)
        if shape[0] != hi - lo:
            raise DistributedError(f"dropout saw {shape[0]} rows that are not this rank's slice of a batch from "
                                   "shard()", self.rank)
        return backend.uniform(rng, (n, *shape[1:]), dtype, seed=seed)[lo:hi]

    def loss(self, loss_fn):
        return _ShardedLoss(loss_fn, self)

    def sync_grads(self):
        for flat in self.buckets:
            self.allreduce_(flat)

    def any(self, flag):
        with self._collective("an allreduce"):
            return bool(self.comm.allreduce(int(bool(flag)), op=self.MPI.SUM))

    def sums(self, *values):
        total = numpy.array(values, dtype=numpy.float64)
        with self._collective("an allreduce"):
            self.comm.Allreduce(self.MPI.IN_PLACE, total, op=self.MPI.SUM)
        return tuple(type(v)(t) for v, t in zip(values, total))

    def settle(self, model):
        for _, m in model.named_modules():
            for name, buf in m._buffers.items():
                host = self.bcast(backend.asnumpy(buf) if self.is_root else None)
                buf[...] = backend.to_device(host) if backend.is_cupy_array(buf) else host
        h = hashlib.sha256()
        for _, p in model.named_parameters():
            h.update(numpy.ascontiguousarray(backend.asnumpy(p.data)).tobytes())
        digests = self.allgather(h.hexdigest())
        if len(set(digests)) > 1:
            raise RuntimeError(f"the ranks' weights have diverged (digests {digests}); this is a bug")

    def evaluate(self, evaluate, model, images, labels, batch_size):
        lo, hi = _slice(len(labels), self.size, self.rank)
        loss, _, preds, probs = evaluate(model, images[lo:hi], labels[lo:hi], batch_size)
        parts = self.allgather((loss * (hi - lo), preds, probs))
        preds = numpy.concatenate([p for _, p, _ in parts])
        probs = numpy.concatenate([q for _, _, q in parts])
        accuracy = float((preds == backend.asnumpy(labels)).mean())
        return sum(s for s, _, _ in parts) / len(preds), accuracy, preds, probs

    def from_root(self, fn, *args):
        result, error = None, None
        if self.is_root:
            try:
                result = fn(*args)
            except Exception as e:  # every rank raises it, so none waits for the others
                error = e
        result, error = self.bcast((result, error))
        if error is not None:
            raise error
        return result

    def root_first(self, fn, *args):
        if self.is_root:
            result = fn(*args)
            self.barrier()
            return result
        # Unwatched: rank 0 may be downloading for minutes, which is no fault.
        self.comm.Barrier()
        return fn(*args)

    @contextlib.contextmanager
    def guard(self, prog, expected=()):
        try:
            yield
        except DistributedError:
            raise  # raised alike on every rank: nobody waits
        except Exception as e:
            if not isinstance(e, expected):
                traceback.print_exc()
            elif self.rank:
                # An error every rank meets (bad flags, missing data) is best reported once: rank
                # 0's abort usually ends this rank first.
                time.sleep(1.0)
            print(f"{prog}: error on rank {self.rank} of {self.size}: {e}; ending the job", file=sys.stderr, flush=True)
            self.abort(1)


class _ShardedLoss:
    """A loss over this rank's slice that reports the global batch's mean and scales its gradient
    by slice / global batch, so that summing the ranks' gradients gives the global batch's."""

    def __init__(self, loss_fn, comm):
        self.loss_fn, self.comm = loss_fn, comm

    def __call__(self, logits, labels):
        total, n = self.comm.sums(self.loss_fn(logits, labels) * len(labels), len(labels))
        return total / n

    def backward(self):
        return self.loss_fn.backward(scale=self.comm._scale)

    def hits(self, logits, labels):
        """This rank's own count (the epoch's sums add the ranks' up)."""
        return self.loss_fn.hits(logits, labels)

    def out_of_range_labels(self) -> int:
        """This rank's count (the loop sums the ranks' with the epoch's totals)."""
        return self.loss_fn.out_of_range_labels()


def _flat_grads(params):
    """Re-point every ``Parameter.grad`` at a view of one flat buffer per dtype, so the gradient
    sum is one Allreduce per dtype instead of one per parameter -> [flat buffers]. Gradients
    the optimizer already keeps in one flat buffer (on a GPU) stay there."""
    params = list(params)
    if params and params[0].flat is not None and params[0].flat.params == params:
        return [params[0].flat.grad]
    groups = {}
    for p in params:
        groups.setdefault(numpy.dtype(p.grad.dtype), []).append(p)
    buckets = []
    for dtype, group in groups.items():
        xp = backend.get_array_module(group[0].grad)
        flat = xp.zeros(sum(int(p.grad.size) for p in group), dtype=dtype)
        offset = 0
        for p in group:
            n = int(p.grad.size)
            view = flat[offset : offset + n].reshape(p.grad.shape)
            view[...] = p.grad
            p.grad = view
            offset += n
        buckets.append(flat)
    return buckets
