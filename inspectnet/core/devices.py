"""Device selection: ``"auto"`` means CUDA when present, else CPU."""

import os

import torch

from inspectnet.core.errors import InspectnetError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:1"`` into a usable device.

    Args:
        device: a device name, ``"auto"`` (CUDA when present, else CPU) or a ``torch.device``
            (returned as it is).

    Returns:
        The device.

    Raises:
        InspectnetError: the name is no device, or it asks for a CUDA device that is not available.

    Examples:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise InspectnetError(f"--device {device!r} is not a device; expected auto, cpu or cuda[:N]") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InspectnetError(f"--device {device!r} asked for CUDA but no CUDA device is available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InspectnetError(f"--device {device!r}: there are only {torch.cuda.device_count()} CUDA device(s)")
    return dev


def default_workers() -> int:
    """Data loader processes that decode images when ``--workers`` is not given.

    One per CPU core this process may use beyond the one running the model, the cores shared among
    the ``torchrun`` ranks of this machine, at most 8; 0 (decode in the main process) on one or two cores,
    where a worker would only compete with the model's threads.

    Returns:
        The number of worker processes (0 to 8).

    Examples:
        >>> 0 <= default_workers() <= 8
        True
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_rank = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return 0 if per_rank <= 2 else min(8, per_rank - 1)
