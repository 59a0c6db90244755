"""Supervised training / fine-tuning with cross-entropy, checkpointed every epoch and resumable.

Shuffling is derived from ``seed + epoch`` and the RNG state is saved with each checkpoint, so a run
interrupted after epoch k and resumed continues exactly as an uninterrupted one would (on CPU).
Extra loss terms (interpretability regularizers) plug in through :class:`TrainHooks`.
"""

import dataclasses
import io
import math
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from inspectnet.data import ImageDataset
from inspectnet.devices import resolve_device
from inspectnet.errors import InspectnetError
from inspectnet.layers import eval_mode
from inspectnet.progress import progress
from inspectnet.storage import atomic_write_bytes, atomic_write_text
from inspectnet.zoo import ZooModel, save_model

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of :func:`train` (all JSON-friendly; they key resumption)."""

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


class TrainHooks:
    """Extension points of the training loop; the default adds nothing.

    ``loss`` returns extra loss terms for a batch (name -> scalar tensor), ``epoch_end`` returns
    metrics to log, ``state_dict``/``load_state_dict`` carry state through checkpoints, and
    ``parameter_groups`` may change which parameters get weight decay.
    """

    def loss(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def epoch_end(self, epoch: int) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def parameter_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]


def make_optimizer(model: nn.Module, config: TrainConfig, hooks: TrainHooks) -> torch.optim.Optimizer:
    groups = hooks.parameter_groups(model, config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr)


def evaluate(zm: ZooModel, dataset: ImageDataset, *, batch_size: int = 128, device: str = "auto",
             limit: int | None = None) -> float:
    """Top-1 accuracy of ``zm`` on a labelled dataset.

    >>> from inspectnet import load_model, load_data
    >>> zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=16)
    >>> 0.0 <= evaluate(zm, load_data("digits:test", zm.transform()), limit=32) <= 1.0
    True
    """
    dev = resolve_device(device)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(n)), batch_size=batch_size)
    correct = total = 0
    zm.model.to(dev)
    with eval_mode(zm.model), torch.inference_mode():
        for x, y in progress(loader, total=len(loader), desc="evaluate"):
            keep = y >= 0
            pred = zm.model(x.to(dev)).argmax(1).cpu()
            correct += int((pred[keep] == y[keep]).sum())
            total += int(keep.sum())
    if total == 0:
        raise InspectnetError(f"data {dataset.spec!r} has no labelled samples to evaluate on")
    return correct / total


def train(zm: ZooModel, train_data: ImageDataset, out: str | Path, config: TrainConfig = TrainConfig(), *,
          eval_data: ImageDataset | None = None, device: str = "auto", hooks: TrainHooks | None = None,
          stop_after: int | None = None) -> list[dict[str, Any]]:
    """Train ``zm`` on ``train_data``; save it to ``out`` (a model folder) and return per-epoch metrics.

    A checkpoint is written after every epoch; calling again with the same arguments resumes.
    ``stop_after`` ends the run after that many epochs (as an interruption would).
    """
    hooks = hooks or TrainHooks()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_labels(zm, train_data)
    dev = resolve_device(device)
    zm.model.to(dev)
    optimizer = make_optimizer(zm.model, config, hooks)
    identity = {"model": zm.spec, "data": train_data.spec, "config": dataclasses.asdict(config)}
    start, history = _resume(out, identity, zm, optimizer, hooks)
    n = len(train_data) if config.limit is None else min(config.limit, len(train_data))
    subset = torch.utils.data.Subset(train_data, range(n))
    for epoch in range(start, config.epochs):
        if stop_after is not None and epoch >= stop_after:
            return history
        order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed + epoch))
        loader = torch.utils.data.DataLoader(subset, batch_size=config.batch_size,
                                             sampler=order.tolist(), drop_last=False)
        metrics = _train_epoch(zm, loader, optimizer, hooks, dev, epoch, config)
        metrics.update(hooks.epoch_end(epoch))
        if eval_data is not None:
            metrics["eval_accuracy"] = evaluate(zm, eval_data, device=str(dev))
        history.append(metrics)
        _save_checkpoint(out, identity, zm, optimizer, hooks, epoch + 1, history)
    zm.model.eval()
    save_model(zm, out)
    return history


def _check_labels(zm: ZooModel, data: ImageDataset) -> None:
    labels = np.asarray(data.labels)
    if len(labels) == 0 or (labels < 0).all():
        raise InspectnetError(f"data {data.spec!r} has no labels to train on")
    if labels.max() >= zm.num_classes:
        raise InspectnetError(f"data {data.spec!r} has labels up to {labels.max()} but the model has "
                              f"{zm.num_classes} outputs; pass --num-classes {len(data.class_names)}")


def _train_epoch(zm: ZooModel, loader: torch.utils.data.DataLoader, optimizer: torch.optim.Optimizer,
                 hooks: TrainHooks, dev: torch.device, epoch: int, config: TrainConfig) -> dict[str, Any]:
    model = zm.model
    model.train()
    ce_fn = nn.CrossEntropyLoss()
    sums: dict[str, float] = {"loss": 0.0, "ce": 0.0}
    correct = seen = 0
    steps = len(loader)
    for step, (x, y) in enumerate(progress(loader, total=steps, desc=f"epoch {epoch + 1}")):
        _set_lr(optimizer, config, (epoch * steps + step) / (config.epochs * steps))
        x, y = x.to(dev), y.to(dev)
        logits = model(x)
        ce = ce_fn(logits, y)
        extra = hooks.loss(x, y, logits)
        loss = ce + sum(extra.values(), torch.zeros((), device=dev))
        if not torch.isfinite(loss):
            raise InspectnetError(f"training diverged at epoch {epoch + 1} (loss {loss.item()}); lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        b = len(y)
        sums["loss"] += loss.item() * b
        sums["ce"] += ce.item() * b
        for k, v in extra.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * b
        correct += int((logits.argmax(1) == y).sum())
        seen += b
    return {"epoch": epoch + 1, **{k: v / seen for k, v in sums.items()}, "train_accuracy": correct / seen}


def _set_lr(optimizer: torch.optim.Optimizer, config: TrainConfig, progress_fraction: float) -> None:
    """Learning rate as a function of training progress alone, so resumed runs see the same values."""
    scale = 0.5 * (1 + math.cos(math.pi * progress_fraction)) if config.schedule == "cosine" else 1.0
    for group in optimizer.param_groups:
        group["lr"] = config.lr * scale


def _save_checkpoint(out: Path, identity: dict, zm: ZooModel, optimizer: torch.optim.Optimizer,
                     hooks: TrainHooks, epoch: int, history: list[dict[str, Any]]) -> None:
    buf = io.BytesIO()
    torch.save({"identity": json.dumps(identity, sort_keys=True), "epoch": epoch,
                "model": zm.model.state_dict(), "optimizer": optimizer.state_dict(),
                "hooks": hooks.state_dict(), "rng": torch.get_rng_state(),
                "history": json.dumps(history)}, buf)
    atomic_write_bytes(out / CHECKPOINT, buf.getvalue())
    atomic_write_text(out / METRICS, "".join(json.dumps(h) + "\n" for h in history))


def _resume(out: Path, identity: dict, zm: ZooModel, optimizer: torch.optim.Optimizer,
            hooks: TrainHooks) -> tuple[int, list[dict[str, Any]]]:
    path = out / CHECKPOINT
    if not path.exists():
        return 0, []
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt["identity"] != json.dumps(identity, sort_keys=True):
        raise InspectnetError(f"--out {out} holds a checkpoint of a different training run; choose another "
                              f"folder or delete it")
    zm.model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    hooks.load_state_dict(ckpt["hooks"])
    torch.set_rng_state(ckpt["rng"])
    return int(ckpt["epoch"]), json.loads(ckpt["history"])


def class_counts(labels: Sequence[int], num_classes: int) -> np.ndarray:
    """Samples per class (labels < 0 ignored)."""
    labels = np.asarray(labels)
    return np.bincount(labels[labels >= 0], minlength=num_classes)
