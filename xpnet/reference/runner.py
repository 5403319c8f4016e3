"""``TorchRunner``: the PyTorch twin under ``xpnet.training.loop.fit``, for ``xpnet train --framework torch``.

It keeps ``XpnetRunner``'s contract, so the twin trains under the same loop: the same initial
weights (those of the xpnet model built from the run's generator, which also leaves the generator
where an xpnet run leaves it), the same batches and augmentation (``fit`` draws them from that
generator), the same schedule, optimizer settings, loss and evaluation, and checkpoints in xpnet's
layout, so ``xpnet evaluate`` reads them. Dropout masks come from the same host generator too, so
with dropout the data order of later epochs stays the same.
"""

from __future__ import annotations

import numpy
import torch

from xpnet import backend, checkpoint, optim
from xpnet.data import batches
from xpnet.models import schema
from xpnet.reference.report2 import TorchReport2Net
from xpnet.reference.resnet9 import TorchResNet9, to_torch_state

TWINS = {"resnet9": TorchResNet9, "report2": TorchReport2Net}


def build_twin(model_config: dict, num_classes: int) -> torch.nn.Module:
    """The PyTorch twin of the network ``model_config`` describes (``xpnet.models.build_model``)."""
    return TWINS[schema.arch(model_config)](num_classes=num_classes, **schema.check(model_config, num_classes))


def cuda_available() -> bool:
    return torch.cuda.is_available()


class HostDropout(torch.nn.Module):
    """Inverted dropout whose mask is xpnet's: ``u >= p`` with u drawn from the host generator."""

    def __init__(self, p, rng):
        super().__init__()
        self.p, self.rng = float(p), rng

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        u = torch.as_tensor(backend.asnumpy(backend.uniform(self.rng, tuple(x.shape), numpy.float32)), device=x.device)
        scale = 0.0 if self.p >= 1.0 else 1.0 / (1.0 - self.p)
        return x * ((u >= self.p).to(x.dtype) * scale)


def _slots(cfg) -> tuple[str, ...]:
    # The names xpnet's optimizers give their state, which torch.optim happens to share.
    if cfg.optimizer == "sgd":
        return ("momentum_buffer",) if cfg.momentum else ()
    return ("exp_avg", "exp_avg_sq")


# torch.optim's class of each of xpnet's optimizers; both take ``optim.settings(cfg)``.
TORCH_OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def build_optimizer(cfg, model) -> torch.optim.Optimizer:
    """The twin of ``xpnet.training.runner.build_optimizer``: the same settings, torch's class."""
    settings = optim.settings(cfg)
    return TORCH_OPTIMIZERS[cfg.optimizer](model.parameters(), **settings)


class TorchRunner:
    """The twin of ``cfg``'s network with a ``torch.optim`` optimizer, on CPU (NumPy backend) or CUDA (CuPy)."""

    def __init__(self, cfg, num_classes: int, rng):
        from xpnet.models import build_model

        source = build_model(cfg.model_config(), num_classes, rng)
        if backend.name() == "cupy" and not torch.cuda.is_available():
            raise backend.BackendError("the torch twin on the cupy backend needs a CUDA build of torch")
        self.device = torch.device("cuda" if backend.name() == "cupy" else "cpu")
        model = build_twin(cfg.model_config(), num_classes)
        model.load_state_dict(to_torch_state(source.state_dict()))
        for name, m in list(model.classifier.named_children()):
            if isinstance(m, torch.nn.Dropout):
                setattr(model.classifier, name, HostDropout(m.p, rng))
        self.model = model.to(self.device).train()
        self.opt = build_optimizer(cfg, self.model)
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.slots = _slots(cfg)
        self.inputs = cfg.inputs
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.steps = 0
        self._loss = None

    def start(self, comm) -> None:
        if comm.size > 1:
            from xpnet.distributed import DistributedError

            raise DistributedError("the PyTorch twin trains in one process: run --framework torch without mpiexec",
                                   comm.rank)

    def settle(self) -> None:
        pass

    def out_of_range_labels(self) -> int:
        return 0  # PyTorch's loss raises on such a label itself

    def _tensor(self, a):
        return torch.as_tensor(backend.asnumpy(a), device=self.device)

    def forward(self, x, y):
        """x: (B, C, H, W), y: (B,) current-backend arrays -> (loss, logits (B, K) current-backend)."""
        self.opt.zero_grad(set_to_none=True)
        logits = self.model(self._tensor(x))
        self._loss = self.loss_fn(logits, self._tensor(y))
        return float(self._loss.detach()), backend.to_device(logits.detach().cpu().numpy())

    def hits(self, logits, y):
        return (logits.argmax(axis=1) == y).sum()

    def backward(self) -> None:
        loss, self._loss = self._loss, None
        loss.backward()

    def step(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        self.steps += 1

    def evaluate(self, images, labels, batch_size):
        """As ``xpnet.training.runner.evaluate``: -> (mean loss, accuracy, predictions (N,), probabilities (N, K))."""
        self.model.eval()
        total, preds, probs = 0.0, [], []
        try:
            with torch.inference_mode():
                for x, y in batches(images, labels, batch_size, shuffle=False, inputs=self.inputs):
                    logits = self.model(self._tensor(x))
                    total += float(torch.nn.functional.cross_entropy(logits, self._tensor(y), reduction="sum"))
                    probs.append(torch.softmax(logits, dim=1).cpu().numpy())
                    preds.append(logits.argmax(dim=1).cpu().numpy())
        finally:
            self.model.train()
        preds_np = numpy.concatenate(preds).astype(numpy.int64)
        accuracy = float((preds_np == backend.asnumpy(labels)).mean())
        return total / len(preds_np), accuracy, preds_np, numpy.concatenate(probs)

    def logits(self, x):
        """As ``XpnetRunner.logits``: eval-mode logits (B, K) of x, on the host."""
        self.model.eval()
        try:
            with torch.inference_mode():
                return self.model(self._tensor(x)).cpu().numpy()
        finally:
            self.model.train()

    def synchronize(self) -> None:
        backend.synchronize()
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def state(self):
        """-> (arrays in xpnet's checkpoint layout, optimizer scalars)."""
        model = {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}
        slots = {}
        for name, p in self.model.named_parameters():
            st = self.opt.state.get(p, {})
            for slot in self.slots:
                value = st.get(slot)
                slots[f"{name}.{slot}"] = (
                    numpy.zeros(tuple(p.shape), numpy.float32) if value is None else value.detach().cpu().numpy().copy()
                )
        arrays = {**checkpoint.prefixed(checkpoint.MODEL, model), **checkpoint.prefixed(checkpoint.OPTIM, slots)}
        return arrays, {"steps": self.steps, "lr": float(self.opt.param_groups[0]["lr"])}

    def load_state(self, arrays: dict, scalars: dict) -> None:
        state = checkpoint.section(arrays, checkpoint.MODEL)
        try:
            self.model.load_state_dict(to_torch_state(state))
        except (KeyError, RuntimeError) as e:
            raise checkpoint.CheckpointError(f"weights do not fit the model config ({e})") from e
        self.steps = int(scalars["steps"])
        for group in self.opt.param_groups:
            group["lr"] = float(scalars["lr"])
        if self.steps == 0 or not self.slots:
            return
        slots = checkpoint.section(arrays, checkpoint.OPTIM)
        for name, p in self.model.named_parameters():
            st = {slot: self._tensor(slots[f"{name}.{slot}"]).clone() for slot in self.slots}
            if "exp_avg" in st:
                st["step"] = torch.tensor(float(self.steps))
            self.opt.state[p] = st
