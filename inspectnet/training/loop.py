"""Supervised training / fine-tuning with cross-entropy, checkpointed every epoch and resumable.

Shuffling is derived from ``seed + epoch``, torch's generator (dropout, stochastic plugins) is
seeded with ``seed`` at the start of a run (the caller's random state is left as it was), and the
generator's state is saved with each checkpoint, so a run interrupted after epoch k and resumed
continues exactly as an uninterrupted one would (on CPU). Extra loss terms (interpretability
regularizers) plug in through :class:`TrainHooks`.

A run's identity is its model spec, starting weights (fingerprint), data, config and hooks: a
checkpoint in ``out`` is resumed only by the same run (given its starting model, or the model as
the run left it), and anything else is refused naming what differs. An ``out`` folder that holds
other files but no checkpoint is refused, so a run never writes over a user's files.

On CUDA the forward pass runs under mixed precision (bf16 where supported, else fp16 with a
gradient scaler) while hook losses run outside autocast in float32. Under ``torchrun`` (an
initialised ``torch.distributed`` process group) the model is wrapped in DDP: each global batch of
``batch_size`` samples is split across ranks and the loss is scaled so that the averaged gradient
equals the one-process gradient of the whole batch; only rank 0 writes files.
"""

import dataclasses
import io
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from inspectnet.core.devices import resolve_device
from inspectnet.core.distributed import world as distributed_world
from inspectnet.core.errors import InspectnetError
from inspectnet.core.progress import progress
from inspectnet.core.storage import atomic_write_bytes, atomic_write_text, check_output_dir, output_dir, strict_json
from inspectnet.data import ImageDataset
from inspectnet.models.layers import model_state
from inspectnet.models.zoo import ZooModel, save_model, state_fingerprint
from inspectnet.training.config import TrainConfig
from inspectnet.training.hooks import TrainHooks

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


def make_optimizer(model: nn.Module, config: TrainConfig, hooks: TrainHooks) -> torch.optim.Optimizer:
    """The optimizer of ``config`` (SGD with momentum, or AdamW) over the hooks' parameter groups.

    Args:
        model: the model.
        config: the training configuration.
        hooks: give the parameter groups.

    Returns:
        The optimizer.
    """
    groups = hooks.parameter_groups(model, config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr)


def evaluate(zm: ZooModel, dataset: ImageDataset, *, batch_size: int = 128, device: str = "auto",
             limit: int | None = None) -> float:
    """Top-1 accuracy of ``zm`` on a labelled dataset.

    Its classes are mapped onto the model's (see :meth:`~inspectnet.data.datasets.ImageDataset.aligned_to`).

    Args:
        zm: the model.
        dataset: labelled data.
        batch_size: samples per forward pass.
        device: where to run the model.
        limit: the first ``limit`` samples only.

    Returns:
        The accuracy on the labelled samples.

    Raises:
        InspectnetError: the data has no labelled samples.

    Examples:
        >>> from inspectnet import load_model, load_data
        >>> zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=16)
        >>> 0.0 <= evaluate(zm, load_data("digits:test", zm.transform()), limit=32) <= 1.0
        True
    """
    dev = resolve_device(device)
    dataset = dataset.aligned_to(zm.class_names)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(n)), batch_size=batch_size)
    correct = total = 0
    with model_state(zm.model, device=dev, training=False), torch.inference_mode():
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
          stop_after: int | None = None, amp: bool | None = None,
          log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Train ``zm`` on ``train_data``; save it to ``out`` (a model folder) and return per-epoch metrics.

    ``log`` receives a start line and one line per epoch (metrics, seconds) whatever the terminal:
    the progress bars show only where stderr is one.

    A checkpoint is written after every epoch; calling again with the same arguments resumes.
    The weights are trained in place; the model goes back to its device and train/eval flags
    afterwards. Both datasets' classes are mapped onto the model's
    (:meth:`~inspectnet.data.datasets.ImageDataset.aligned_to`).

    Args:
        zm: the model, trained in place.
        train_data: the training data.
        out: the output folder.
        config: the training configuration.
        eval_data: data evaluated after every epoch.
        device: where to train.
        hooks: extra loss terms, metrics and parameter groups (fine-tuning plugins).
        stop_after: end after that many epochs (as an interruption would).
        amp: mixed precision (None: on for CUDA devices only).
        log: receives the start line and the epoch lines.

    Returns:
        One dict of metrics per epoch.
    """
    hooks = hooks or TrainHooks()
    out = Path(out)
    train_data = train_data.aligned_to(zm.class_names)
    eval_data = eval_data.aligned_to(zm.class_names) if eval_data is not None else None
    _check_labels(train_data)
    world, rank = distributed_world()
    _check_run_folder(out)
    dev = resolve_device(device)
    if rank == 0:
        output_dir(out)
    with model_state(zm.model, device=dev), torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(config.seed)  # a resumed run replaces this by the checkpoint's generator state
        return _train_on_device(zm, train_data, out, config, eval_data=eval_data, dev=dev, hooks=hooks,
                                stop_after=stop_after, amp=amp, world=world, rank=rank,
                                log=(log if rank == 0 and log else lambda _m: None))


def _check_run_folder(out: Path) -> None:
    """Refuse an ``out`` that is a file, or a folder holding files but no training checkpoint."""
    check_output_dir(out)
    if out.is_dir() and not (out / CHECKPOINT).exists() and any(out.iterdir()):
        raise InspectnetError(f"--out {out} is not empty and holds no training checkpoint; choose an empty or "
                              f"new folder (a run never writes over other files)")


def _train_on_device(zm: ZooModel, train_data: ImageDataset, out: Path, config: TrainConfig, *,
                     eval_data: ImageDataset | None, dev: torch.device, hooks: TrainHooks, stop_after: int | None,
                     amp: bool | None, world: int, rank: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    optimizer = make_optimizer(zm.model, config, hooks)
    precision = _Precision(dev, amp)
    identity = {"model": zm.spec, "start_weights": zm.fingerprint(), "data": train_data.spec,
                "config": dataclasses.asdict(config)}
    if train_data.label_mapping is not None:  # resuming with the classes mapped otherwise is another run
        identity["label_mapping"] = train_data.label_mapping.identity()
    if hooks.identity():
        identity["hooks"] = hooks.identity()
    start, history = _resume(out, identity, zm, optimizer, hooks, precision)
    n = len(train_data) if config.limit is None else min(config.limit, len(train_data))
    subset = torch.utils.data.Subset(train_data, range(n))
    forward = _wrap_distributed(zm.model, dev) if world > 1 else zm.model
    log(f"training {zm.spec} on {n:,} samples of {train_data.spec} for {config.epochs} epochs on {dev}"
        + (f" (resuming after epoch {start})" if start else "") + f"; checkpoints in {out}")
    for epoch in range(start, config.epochs):
        t0 = time.perf_counter()
        if stop_after is not None and epoch >= stop_after:
            return history
        order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed + epoch))
        loader = torch.utils.data.DataLoader(subset, batch_sampler=_rank_batches(order, config.batch_size,
                                                                                 world, rank))
        metrics = _train_epoch(zm, loader, optimizer, hooks, dev, epoch, config, forward=forward,
                               precision=precision, world=world, n=n)
        metrics.update(hooks.epoch_end(epoch))
        if eval_data is not None and rank == 0:
            metrics["eval_accuracy"] = evaluate(zm, eval_data, device=str(dev))
        history.append(metrics)
        shown = {k: v for k, v in metrics.items() if k != "epoch"}
        log(f"epoch {epoch + 1}/{config.epochs}: {epoch_line(shown)} ({time.perf_counter() - t0:.1f} s)")
        if rank == 0:
            _save_checkpoint(out, identity, zm, optimizer, hooks, epoch + 1, history, precision)
    if rank == 0:
        save_model(zm, out)
    return history


def epoch_line(metrics: dict[str, Any]) -> str:
    """An epoch's metrics as one line, e.g. ``loss=0.1234 train_accuracy=0.9000``.

    Args:
        metrics: metric name -> value.

    Returns:
        The line.

    Examples:
        >>> epoch_line({"epoch": 1, "loss": 0.25, "eval_accuracy": 0.5})
        'epoch=1 loss=0.2500 eval_accuracy=0.5000'
    """
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def _wrap_distributed(model: nn.Module, dev: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    ids = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else None
    # broadcast_buffers=False: BN running statistics stay per rank (as with one process, they
    # are a function of the samples each forward sees); parameters are broadcast at wrap time
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def _rank_batches(order: torch.Tensor, batch_size: int, world: int, rank: int) -> list[list[int]]:
    """This rank's share of every global batch.

    Global batch b is split into ``world`` contiguous parts, so the union over ranks of each step's
    samples equals the one-process batch.
    """
    if world > 1 and min(batch_size, len(order) - (len(order) - 1) // batch_size * batch_size) < world:
        raise InspectnetError(f"the last batch of {len(order)} samples in batches of {batch_size} has fewer "
                              f"samples than the {world} processes; change --batch-size or --limit")
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        part = chunk.tensor_split(world)[rank] if world > 1 else chunk
        batches.append(part.tolist())
    return batches


class _Precision:
    """Mixed-precision policy: autocast on CUDA (bf16 when supported, else fp16 + GradScaler).

    On CPU only when asked (bf16).
    """

    def __init__(self, dev: torch.device, amp: bool | None):
        self.enabled = (dev.type == "cuda") if amp is None else bool(amp)
        if self.enabled and dev.type not in ("cuda", "cpu"):
            raise InspectnetError(f"mixed precision (amp) is not supported on {dev.type}")
        self.device_type = dev.type
        # CPU autocast (asked for explicitly) runs bf16; it exists mainly to test the amp path
        bf16 = dev.type == "cpu" or torch.cuda.is_bf16_supported()
        self.dtype = torch.bfloat16 if bf16 else torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if self.enabled and self.dtype == torch.float16 else None

    def autocast(self) -> Any:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()


def _check_labels(data: ImageDataset) -> None:
    labels = np.asarray(data.labels)
    if len(labels) == 0 or (labels < 0).all():
        raise InspectnetError(f"data {data.spec!r} has no labels to train on")


def _train_epoch(zm: ZooModel, loader: torch.utils.data.DataLoader, optimizer: torch.optim.Optimizer,
                 hooks: TrainHooks, dev: torch.device, epoch: int, config: TrainConfig, *,
                 forward: nn.Module | None = None, precision: "_Precision | None" = None, world: int = 1,
                 n: int | None = None) -> dict[str, Any]:
    model = zm.model
    forward = forward or model
    precision = precision or _Precision(dev, False)
    model.train()
    hooks.epoch_begin(epoch, model)
    ce_fn = nn.CrossEntropyLoss()
    sums: dict[str, float] = {"loss": 0.0, "ce": 0.0}
    correct = seen = 0
    steps = len(loader)
    for step, (x, y) in enumerate(progress(loader, total=steps, desc=f"epoch {epoch + 1}")):
        _set_lr(optimizer, config, (epoch * steps + step) / (config.epochs * steps))
        x, y = x.to(dev), y.to(dev)
        with precision.autocast():
            logits = forward(x)
        logits = logits.float()
        ce = ce_fn(logits, y)
        extra = hooks.loss(x, y, logits)  # outside autocast: regularizers run in float32
        loss = ce + sum(extra.values(), torch.zeros((), device=dev))
        if not torch.isfinite(loss):
            raise InspectnetError(f"training diverged at epoch {epoch + 1} (loss {loss.item()}); lower --lr")
        optimizer.zero_grad(set_to_none=True)
        if world > 1:
            # DDP averages gradients over ranks; weighting by this rank's share of the global batch
            # makes the result the gradient of the global-batch mean, also for a short last batch
            global_b = min(config.batch_size, (n or 0) - step * config.batch_size)
            loss = loss * (len(y) * world / global_b)
        precision.backward_step(loss, optimizer)
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
                     hooks: TrainHooks, epoch: int, history: list[dict[str, Any]],
                     precision: "_Precision | None" = None) -> None:
    buf = io.BytesIO()
    state = {"identity": json.dumps(identity, sort_keys=True), "epoch": epoch,
             "model": zm.model.state_dict(), "optimizer": optimizer.state_dict(),
             "hooks": hooks.state_dict(), "rng": torch.get_rng_state(),
             "history": json.dumps(history)}
    if precision is not None and precision.scaler is not None:
        state["scaler"] = precision.scaler.state_dict()
    if torch.cuda.is_available() and next(zm.model.parameters()).is_cuda:
        state["cuda_rng"] = torch.cuda.get_rng_state()
    torch.save(state, buf)
    atomic_write_bytes(out / CHECKPOINT, buf.getvalue())
    atomic_write_text(out / METRICS, "".join(json.dumps(strict_json(h), allow_nan=False) + "\n" for h in history))


def _resume(out: Path, identity: dict, zm: ZooModel, optimizer: torch.optim.Optimizer,
            hooks: TrainHooks, precision: "_Precision | None" = None) -> tuple[int, list[dict[str, Any]]]:
    path = out / CHECKPOINT
    if not path.exists():
        return 0, []
    ckpt = _load_checkpoint(path)
    saved = json.loads(ckpt["identity"])
    if saved.get("start_weights") != identity["start_weights"] \
            and state_fingerprint(ckpt["model"].items()) == identity["start_weights"]:
        # the model is where this run left it (the same object trained in place): its start was the saved one
        identity = {k: v for k, v in identity.items() if k != "start_weights"}
        identity.update({k: saved[k] for k in ("start_weights",) if k in saved})
    if ckpt["identity"] != json.dumps(identity, sort_keys=True):
        raise InspectnetError(f"--out {out} holds a checkpoint of a different training run "
                              f"({_identity_difference(saved, identity)}); choose another folder or delete it")
    zm.model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    hooks.load_state_dict(ckpt["hooks"])
    torch.set_rng_state(ckpt["rng"])
    if "scaler" in ckpt and precision is not None and precision.scaler is not None:
        precision.scaler.load_state_dict(ckpt["scaler"])
    if "cuda_rng" in ckpt and torch.cuda.is_available():
        torch.cuda.set_rng_state(ckpt["cuda_rng"])
    return int(ckpt["epoch"]), json.loads(ckpt["history"])


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged file makes torch.load raise many types
        raise InspectnetError(f"training checkpoint {path} cannot be read ({type(exc).__name__}); delete it to "
                              f"start the run again") from None
    if not isinstance(ckpt, dict) or not {"identity", "epoch", "model", "optimizer"} <= set(ckpt):
        raise InspectnetError(f"{path} is not an inspectnet training checkpoint")
    return ckpt


def _identity_difference(saved: dict, wanted: dict) -> str:
    """Which entries of the run identity differ, e.g. ``config.seed: saved 0, now 1`` (dicts compared per key)."""
    def flat(d: dict) -> dict:
        return {f"{k}.{kk}" if isinstance(v, dict) else k: vv for k, v in d.items()
                for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)])}

    saved, wanted = flat(saved), flat(wanted)
    keys = [k for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
    return "; ".join(f"{k}: saved {saved.get(k)!r}, now {wanted.get(k)!r}" for k in keys)
