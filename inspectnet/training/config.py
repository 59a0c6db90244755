"""The hyperparameters of a training run, importable without torch (the command line reads their defaults)."""

import dataclasses

from inspectnet.core.errors import InspectnetError


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of :func:`inspectnet.training.loop.train` (all JSON-friendly; they key resumption)."""

    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    seed: int = 0
    limit: int | None = None
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise InspectnetError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise InspectnetError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.lr <= 0:
            raise InspectnetError(f"--lr must be positive, got {self.lr}")
        if self.schedule not in ("cosine", "constant"):
            raise InspectnetError(f"--schedule {self.schedule!r} is unknown; expected cosine or constant")
        if self.optimizer not in ("adamw", "sgd"):
            raise InspectnetError(f"--optimizer {self.optimizer!r} is unknown; expected adamw or sgd")
