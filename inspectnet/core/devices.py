"""Device selection: ``"auto"`` means CUDA when present, else CPU."""

import torch

from inspectnet.core.errors import InspectnetError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:1"`` into a usable device.

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
