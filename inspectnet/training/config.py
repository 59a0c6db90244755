"""The hyperparameters of a training run, importable without torch (the command line generates its flags from them)."""

import dataclasses

from inspectnet.core.options import option, seed_option, validate


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of :func:`inspectnet.training.loop.train` (all JSON-friendly; they key resumption)."""

    epochs: int = option(3, help="passes over the training data", minimum=1)
    batch_size: int = option(64, help="samples per optimizer step (the global batch under torchrun)", minimum=1)
    lr: float = option(0.05, help="learning rate", above=0, finite=True)
    optimizer: str = option("sgd", help="optimizer", choices=("sgd", "adamw"))
    weight_decay: float = option(1e-4, help="weight decay (not applied to what a plugin regularizes itself)",
                                 minimum=0, finite=True)
    momentum: float = option(0.9, help="SGD momentum", minimum=0, finite=True, cli=False)
    seed: int = seed_option("seed of the initial weights, the shuffling and torch's generator")
    limit: int | None = option(None, help="use only the first N samples", minimum=1, metavar="N")
    schedule: str = option("cosine", help="learning-rate schedule over the epochs", choices=("cosine", "constant"))

    def __post_init__(self) -> None:
        validate(self)
