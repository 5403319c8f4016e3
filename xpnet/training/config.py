"""What defines a training run: ``TrainConfig``, the named recipes (``PRESETS``) and the choices
the command line offers."""

from __future__ import annotations

import dataclasses

from xpnet.errors import XpnetError

FRAMEWORKS = ("xpnet", "torch")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "step", "constant")
CHECKPOINT_EXT = ".safetensors"


class TrainingError(XpnetError, RuntimeError):
    """Training cannot go on (a non-finite loss, a checkpoint that does not fit)."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a run; stored in every checkpoint and in summary.json."""

    epochs: int = 4
    batch_size: int = 128
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    label_smoothing: float = 0.1
    augment: int = 2
    width: float = 1.0
    shortcut: str = "identity"
    res_blocks: int = 2
    head: str = "max"
    dropout: float = 0.0
    train_subset: int = 0
    seed: int = 0
    eval_batch_size: int = 200
    sync_bn: bool = False
    framework: str = "xpnet"

    def model_config(self) -> dict:
        return dict(
            width=self.width,
            shortcut=self.shortcut,
            res_blocks=self.res_blocks,
            head=self.head,
            dropout=self.dropout,
        )

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Named recipes: flag values that ``xpnet train --preset NAME`` starts from (explicit flags win).
# "default" is TrainConfig's own defaults, the recipe for the report's architecture; "fast" is the
# quickest run found to pass 99.5 % on the 2-core CPU: a quarter of the width (a 16x cheaper step)
# for two epochs (docs/results.md lists the runs that chose it).
PRESETS = {
    "default": {},
    "fast": dict(width=0.25, epochs=2),
}
