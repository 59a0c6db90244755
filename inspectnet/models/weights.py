"""Reading weight files safely and fitting them onto an architecture.

Untrusted checkpoints are read with ``torch.load(weights_only=True)`` or safetensors only. A state
dict whose key names differ from the architecture's is remapped by order when every tensor's shape
and kind (weight, bias, running_mean, ...) agree; anything else is refused naming the first
offending tensor.
"""

import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from inspectnet.core.errors import InspectnetError

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from a ``.safetensors`` file or a torch checkpoint (``weights_only=True``).

    Common wrappers (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped and a DDP
    ``module.`` prefix is stripped.

    Args:
        path: the weights file.

    Returns:
        ``{name: tensor}``.

    Raises:
        InspectnetError: the file does not exist, cannot be read, or holds no state dict.

    Examples:
        >>> read_state_dict("missing.pt")
        Traceback (most recent call last):
        ...
        inspectnet.core.errors.InspectnetError: weights file missing.pt does not exist
    """
    path = Path(path)
    if path.is_dir():
        raise InspectnetError(f"weights file {path} is a folder; expected a .safetensors or torch checkpoint file "
                              f"(a folder saved by inspectnet is given as the model, not as --weights)")
    if not path.is_file():
        raise InspectnetError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise InspectnetError(f"weights file {path} is not a readable safetensors file: {_first_line(exc)}"
                                  ) from exc
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            code = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line]
            if not code:  # a pickle weights_only cannot read, but not because it would run code
                raise InspectnetError(f"weights file {path} is not a torch checkpoint readable with "
                                      f"weights_only=True: {_detail(exc)}") from exc
            raise InspectnetError(
                f"weights file {path} needs arbitrary code to unpickle and was refused ({code[0]}; loaded "
                f"with weights_only=True); save it as a plain state dict or safetensors") from exc
        except Exception as exc:  # noqa: BLE001 - damaged files make torch.load raise many types
            raise InspectnetError(f"weights file {path} is not a readable torch checkpoint: "
                                  f"{type(exc).__name__}: {_first_line(exc)}") from exc
    return _as_state_dict(obj, path)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _detail(exc: BaseException) -> str:
    """The unpickler's own reason from torch's long weights_only message (its first line otherwise)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    marker = next((i for i, line in enumerate(lines) if "WeightsUnpickler error" in line), None)
    return lines[marker + 1] if marker is not None and marker + 1 < len(lines) else _first_line(exc)


def _as_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(obj, Mapping) and not _is_tensor_map(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj or not _is_tensor_map(obj):
        raise InspectnetError(f"weights file {path} does not hold a state dict (a mapping of names to tensors)")
    prefix = "module."
    if all(k.startswith(prefix) for k in obj):
        obj = {k[len(prefix):]: v for k, v in obj.items()}
    return dict(obj)


def _is_tensor_map(obj: Mapping) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def fit_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], *,
                   skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Return ``state`` keyed by ``model``'s own names, ready for ``load_state_dict``.

    Keys in ``skip`` (e.g. a classifier being replaced) are dropped from the result after matching,
    so their shapes may differ. Same names: shapes are checked. Different names: the two sequences
    are paired in order, each pair must agree in shape and in the last name component. An integer or
    boolean tensor for a floating-point one is refused naming it.

    Args:
        model: the architecture.
        state: the checkpoint's tensors.
        skip: architecture names left out of the result.

    Returns:
        The tensors keyed by the architecture's names.

    Raises:
        InspectnetError: the tensors cannot be paired, a shape differs, or a dtype cannot hold the values.

    Examples:
        >>> fit_state_dict(nn.Linear(2, 1), {"weight": torch.ones(1, 2, dtype=torch.int64), "bias": torch.zeros(1)})
        Traceback (most recent call last):
        ...
        inspectnet.core.errors.InspectnetError: checkpoint tensor 'weight' holds int64 values but ...
    """
    target = model.state_dict()
    if set(state) == set(target):
        pairs = [(k, k) for k in target]
    else:
        if len(state) != len(target):
            missing = [k for k in target if k not in state][:3]
            extra = [k for k in state if k not in target][:3]
            which = (f"architecture tensors not in the checkpoint: {', '.join(missing)}" if missing
                     else f"checkpoint tensors not in the architecture: {', '.join(extra)}")
            raise InspectnetError(
                f"checkpoint has {len(state)} tensors but the architecture has {len(target)}; cannot remap ({which})")
        pairs = list(zip(target, state))
        for dst, src in pairs:
            if dst.rsplit(".", 1)[-1] != src.rsplit(".", 1)[-1]:
                raise InspectnetError(f"cannot remap checkpoint: tensor {src!r} would map onto {dst!r} "
                                      f"(different kinds of parameter)")
        warnings.warn(f"checkpoint key names differ from the architecture's; remapped {len(pairs)} tensors "
                      f"by order and shape (e.g. {pairs[0][1]!r} -> {pairs[0][0]!r})", stacklevel=2)
    fitted = {}
    for dst, src in pairs:
        if dst in skip:
            continue
        if tuple(state[src].shape) != tuple(target[dst].shape):
            raise InspectnetError(f"checkpoint tensor {src!r} has shape {tuple(state[src].shape)} but the "
                                  f"architecture's {dst!r} has shape {tuple(target[dst].shape)}")
        if target[dst].is_floating_point() and not state[src].is_floating_point():
            # load_state_dict would cast integers silently: such a file is not this model's weights
            raise InspectnetError(f"checkpoint tensor {src!r} holds {str(state[src].dtype).replace('torch.', '')} "
                                  f"values but the architecture's {dst!r} is a floating-point tensor; expected "
                                  f"float weights")
        fitted[dst] = state[src]
    return fitted
