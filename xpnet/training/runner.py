"""The model, optimizer and loss that ``fit`` drives (``XpnetRunner``, or the PyTorch twin through
``build_runner``), the schedule, evaluation, and the checkpoint layout of a runner's state."""

from __future__ import annotations

import functools
import math
import numbers

import numpy

from xpnet import backend, checkpoint, distributed, nn, optim
from xpnet.data import batches
from xpnet.functional import LabelError, softmax
from xpnet.models import build_model
from xpnet.training.config import FRAMEWORKS, INPUTS, SCHEDULES, ConfigError, TrainConfig, TrainingError


def build_optimizer(cfg: TrainConfig, model) -> optim.Optimizer:
    """xpnet's optimizer of ``cfg`` over ``model``'s named parameters (settings: ``optim.settings``)."""
    settings = optim.settings(cfg)
    return optim.OPTIMIZERS[cfg.optimizer](model.named_parameters(), **settings)


class NonFiniteLoss(TrainingError):
    """A step's loss was NaN or infinite; the step was not applied."""

    def __init__(self, loss: float):
        super().__init__(f"loss became {loss}")
        self.loss = loss


def train_step(runner, x, y, lr: float):
    """One training step: the one ``fit`` runs, and the one ``xpnet bench``, the launch counter,
    the memory probe and the scaling measurement time. Forward, a check that the loss is finite
    (before any update, so the weights stay good), backward, one update at ``lr``.

    x: (B, C, H, W), y: (B,) current-backend arrays -> (loss float, hits: how many rows the
    logits predict right, a 0-d current-backend array left on the device). Raises NonFiniteLoss.
    With a CUDA graph the loss is a (1,) device array instead, not yet checked.
    """
    graph = getattr(runner, "graph", None)
    if graph is not None:
        # Replayed as a CUDA graph (``XpnetRunner.use_cuda_graph``): the loss, a (1,) device
        # array, stays there until the caller reads the losses it keeps, and checks them then.
        sums = graph(x, y, lr)
        return sums[0:1] * sums.dtype.type(1.0 / len(y)), sums[1]
    loss, logits = runner.forward(x, y)
    if not math.isfinite(loss):
        raise NonFiniteLoss(loss)
    runner.backward()
    runner.step(lr)
    return loss, runner.hits(logits, y)


def total_steps(epochs, steps_per_epoch: int) -> int:
    """The optimizer steps of a run of ``epochs`` (a positive int or real) epochs: its schedule's
    length and where its loop stops. Integer epochs: exactly ``epochs * steps_per_epoch``; a real
    rounds to the nearest step, at least one (1.3 epochs of 469 batches: 610 steps)."""
    if isinstance(epochs, numbers.Integral):
        return int(epochs) * steps_per_epoch
    return max(1, round(epochs * steps_per_epoch))


def epoch_batches(total: int, steps_per_epoch: int, epoch: int) -> int:
    """How many batches epoch ``epoch`` (from 0) of a run of ``total`` steps trains:
    ``steps_per_epoch``, but the rest in the last, partial one (which draws its shuffle and
    offsets as a whole epoch does, so the generator moves on alike, then stops early). The run
    has ``ceil(total / steps_per_epoch)`` epochs."""
    return min(steps_per_epoch, total - epoch * steps_per_epoch)


def build_schedule(cfg: TrainConfig, steps_per_epoch: int):
    total = max(2, total_steps(cfg.epochs, steps_per_epoch))
    if cfg.schedule == "onecycle":
        return optim.OneCycle(cfg.lr, total, pct_start=0.25)
    if cfg.schedule == "cosine":
        return optim.Cosine(cfg.lr, total, warmup=min(steps_per_epoch, total - 1) // 2)
    if cfg.schedule == "step":
        return optim.StepLR(cfg.lr, step_size=max(1, total // 3), gamma=0.1)
    if cfg.schedule == "constant":
        return optim.Constant(cfg.lr)
    raise ValueError(f"unknown schedule {cfg.schedule!r}; choose one of {', '.join(SCHEDULES)}")


def evaluate(model, images, labels, batch_size=500, inputs="standard", forward=None):
    """Mean loss, accuracy and predictions of ``model`` in eval mode.

    images: (N, H, W) uint8, host or device, scaled as ``inputs`` says (``xpnet.data.normalize``);
    labels: (N,) -> (loss, accuracy, predictions (N,) host int64, probabilities (N, K) host float32).
    ``forward``: what maps a batch to its logits (default: the model itself; a replayed CUDA
    graph of its eval-mode forward with ``--cuda-graph``).
    """
    was_training = model.training
    model.eval()
    loss_fn = nn.CrossEntropyLoss()
    total, preds, probs = 0.0, [], []
    try:
        for x, y in batches(images, labels, batch_size, shuffle=False, inputs=inputs):
            logits = (forward or model)(x)
            total += loss_fn(logits, y) * len(y)
            probs.append(backend.asnumpy(softmax(logits)))
            preds.append(backend.asnumpy(logits.argmax(axis=1)))
    finally:
        model.train(was_training)
    bad = loss_fn.out_of_range_labels()
    if bad:
        raise LabelError(f"{bad} test label(s) outside [0, {logits.shape[1]}): the data does not fit the model")
    preds_np = numpy.concatenate(preds)
    accuracy = float((preds_np == backend.asnumpy(labels)).mean())
    return total / len(preds_np), accuracy, preds_np, numpy.concatenate(probs)


class XpnetRunner:
    """One model with its optimizer and loss, as ``fit`` drives them: here xpnet's own.

    ``xpnet.reference.runner.TorchRunner`` keeps the same contract for the PyTorch twin:
    ``forward(x (B, C, H, W), y (B,)) -> (loss float, logits (B, K) current-backend array)`` in
    training mode; ``start(comm)`` joins the data-parallel communicator before the first step;
    ``backward()`` fills the gradients (summed over ranks); ``step(lr)`` applies one update;
    ``steps`` counts updates; ``settle()`` makes the ranks agree before evaluation and checkpoints;
    ``evaluate(images, labels, batch_size)`` returns what ``evaluate`` does; ``logits(x)`` gives
    eval-mode logits on the host; ``hits(logits, y)`` counts right predictions; ``synchronize()``
    waits for queued device work (for timing); ``state() -> (arrays, scalars)`` gives the
    checkpoint layout ("model.<name>", "optim.<name>.<slot>") and ``load_state(arrays, scalars)``
    takes it back; ``parameters`` counts the weights.
    """

    def __init__(self, cfg: TrainConfig, num_classes: int, rng):
        self.cfg = cfg
        self.model = build_model(cfg.model_config(), num_classes, rng).train()
        self.opt = build_optimizer(cfg, self.model)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.parameters = sum(int(p.data.size) for p in self.model.parameters())
        self.comm = distributed.Solo()

    def start(self, comm) -> None:
        """Before the first step (and after ``load_state``): hand the model to the data-parallel
        communicator, which agrees on weights, hooks sync-BN and sums gradients from then on."""
        self.comm = comm
        comm.start(self.model, self.cfg)
        self.loss_fn = comm.loss(self.loss_fn)

    @property
    def steps(self) -> int:
        return self.opt.steps

    def forward(self, x, y):
        self.opt.zero_grad()
        logits = self.model(x)
        return self.loss_fn(logits, y), logits

    def hits(self, logits, y):
        """The number of rows of the last ``forward``'s logits that predict y, as a 0-d array on
        the current backend (no host read)."""
        return self.loss_fn.hits(logits, y)

    def backward(self) -> None:
        self.model.backward(self.loss_fn.backward())
        self.comm.sync_grads()

    def step(self, lr: float) -> None:
        self.opt.lr = lr
        self.opt.step()

    def evaluate(self, images, labels, batch_size):
        run = functools.partial(evaluate, inputs=self.cfg.inputs, forward=self.eval_graph)
        return self.comm.evaluate(run, self.model, images, labels, batch_size)

    graph = eval_graph = None  # the CUDA graphs of the train step and of evaluation, if used

    def use_cuda_graph(self) -> None:
        """From now on replay the train step, and evaluation's forward, as CUDA graphs
        (``xpnet.training.graphs``; after ``start``, one process, CuPy)."""
        from xpnet.training.graphs import GraphedForward, GraphedStep, GraphError

        if self.comm.size > 1:
            raise TrainingError("--cuda-graph runs in one process for now, not under mpiexec")
        try:
            self.graph = GraphedStep(self.model, self.opt, self.loss_fn)
            self.eval_graph = GraphedForward(self.model)
        except GraphError as e:
            raise TrainingError(f"--cuda-graph: {e}") from None

    def logits(self, x):
        """Eval-mode logits (B, K) of x (B, C, H, W), read to the host; training mode after."""
        self.model.eval()
        try:
            return backend.asnumpy(self.model(x))
        finally:
            self.model.train()

    def settle(self) -> None:
        self.comm.settle(self.model)

    def out_of_range_labels(self) -> int:
        """Labels outside the classes seen on the device since the last call (a host read)."""
        return self.loss_fn.out_of_range_labels()

    def synchronize(self) -> None:
        backend.synchronize()

    def state(self):
        opt_arrays, scalars = self.opt.state_dict()
        arrays = checkpoint.prefixed(checkpoint.MODEL, self.model.state_dict())
        arrays.update(checkpoint.prefixed(checkpoint.OPTIM, opt_arrays))
        return arrays, scalars

    def load_state(self, arrays: dict, scalars: dict) -> None:
        try:
            self.model.load_state_dict(checkpoint.section(arrays, checkpoint.MODEL))
        except (KeyError, ValueError) as e:
            raise checkpoint.CheckpointError(f"weights do not fit the model config ({e})") from e
        self.opt.load_state_dict(checkpoint.section(arrays, checkpoint.OPTIM), scalars)


def build_runner(cfg: TrainConfig, num_classes: int, rng):
    """The runner of ``cfg.framework``; the torch twin draws its initial weights from ``rng``
    exactly as xpnet's model does, so both leave the generator in the same state."""
    if cfg.framework == "xpnet":
        return XpnetRunner(cfg, num_classes, rng)
    if cfg.framework == "torch":
        try:
            from xpnet.reference.runner import TorchRunner
        except ImportError as e:
            raise TrainingError(str(e)) from e
        return TorchRunner(cfg, num_classes, rng)
    raise ValueError(f"unknown framework {cfg.framework!r}; choose one of {', '.join(FRAMEWORKS)}")


def load_model(path, rng=None, read=checkpoint.load):
    """-> (model in eval mode on the current backend, checkpoint arrays, meta); ``read(path)``
    gives the arrays and meta."""
    arrays, meta = read(path)
    # The stored config is checked against the model's schema before anything is allocated, and
    # the tensors against the model (dtype, shape, finite) before they are copied in.
    checkpoint.check_run_meta(path, meta)
    model = build_model(meta["model_config"], meta["num_classes"], numpy.random.default_rng(rng))
    checkpoint.check_tensors(path, arrays, model.state_dict())
    model.load_state_dict(checkpoint.section(arrays, checkpoint.MODEL))
    return model.eval(), arrays, meta


def read_run(path):
    """A training checkpoint to resume -> (arrays, meta), its metadata checked field by field
    (``checkpoint.check_run_meta`` and the run's config, ``TrainConfig.check``)."""
    arrays, meta = checkpoint.load(path)
    checkpoint.check_run_meta(path, meta, resume=True)
    try:
        TrainConfig.from_dict(meta["config"]).check()
    except (ConfigError, TypeError) as e:
        raise checkpoint.CheckpointError(f"{path}: {e}") from None
    return arrays, meta


def stored_crop(meta: dict, path="checkpoint") -> int:
    """The side of the central window a checkpoint's model reads from each image
    (``TrainConfig.crop``; 0, the whole image, for checkpoints written before the field existed).
    A crop must be the square the model was built for (``model_config.image_size``)."""
    config = meta.get("config")
    crop = config.get("crop", 0) if isinstance(config, dict) else 0
    if isinstance(crop, bool) or not isinstance(crop, int) or not 0 <= crop <= 1 << 16:
        raise checkpoint.CheckpointError(f"{path}: config.crop must be an integer in 0..65536, got {crop!r:.60}")
    size = meta["model_config"].get("image_size")
    if crop and list(size or ()) != [crop, crop]:
        raise checkpoint.CheckpointError(
            f"{path}: config.crop {crop} disagrees with model_config.image_size {size!r:.60}")
    return crop


def stored_inputs(meta: dict, path="checkpoint") -> str:
    """How the run a checkpoint's ``meta`` comes from scaled its pixels (``TrainConfig.inputs``;
    "standard" for checkpoints written before the field existed)."""
    config = meta.get("config")
    inputs = config.get("inputs", "standard") if isinstance(config, dict) else "standard"
    if inputs not in INPUTS:
        raise checkpoint.CheckpointError(
            f"{path}: config.inputs must be one of {', '.join(INPUTS)}, got {inputs!r:.60}")
    return inputs
