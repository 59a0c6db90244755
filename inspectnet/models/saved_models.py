"""Model folders saved by inspectnet: safetensors weights plus a config, and the checks that read them back."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inspectnet.core.errors import InspectnetError
from inspectnet.core.storage import atomic_write_json, output_dir, read_json
from inspectnet.models.fingerprints import state_fingerprint

if TYPE_CHECKING:
    from inspectnet.models.zoo import ZooModel

MODEL_FORMAT = "inspectnet-model"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_ORDER_KEY = "inspectnet.state_dict_order"


def saved_weights_fingerprint(folder: str | Path) -> str | None:
    """:func:`weights_fingerprint` of a saved model read from its weights file, without building the model.

    Args:
        folder: a model folder written by :func:`save_model`.

    Returns:
        The fingerprint; None for folders saved before the file recorded its state-dict order (the hash
        follows that order).
    """
    from safetensors import safe_open

    with safe_open(str(Path(folder) / WEIGHTS_FILE), framework="pt") as f:
        order = (f.metadata() or {}).get(_ORDER_KEY)
        if order is None:
            return None
        return state_fingerprint((name, f.get_tensor(name)) for name in json.loads(order))


def save_model(zm: ZooModel, out_dir: str | Path) -> Path:
    """Save as a folder (safetensors weights + config) that :func:`load_model` reads back.

    The config is written last, so a folder without it is never mistaken for a saved model.

    Args:
        zm: the model.
        out_dir: the folder (created).

    Returns:
        The folder.

    Examples:
        >>> import tempfile
        >>> from inspectnet.models.zoo import load_model
        >>> zm = load_model("resnet18", num_classes=2, in_chans=1, input_size=16, seed=0)
        >>> load_model(str(save_model(zm, tempfile.mkdtemp()))).fingerprint() == zm.fingerprint()
        True
    """
    from safetensors.torch import save_file

    from inspectnet.core.storage import atomic_write_bytes

    out = output_dir(out_dir)
    (out / CONFIG_FILE).unlink(missing_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in zm.model.state_dict().items()}
    tmp = out / f".{WEIGHTS_FILE}.{os.getpid()}.part"  # unique per process
    # the order lets saved_weights_fingerprint hash the file as weights_fingerprint hashes the model
    save_file(state, str(tmp), metadata={_ORDER_KEY: json.dumps(list(state))})
    atomic_write_bytes(out / WEIGHTS_FILE, tmp.read_bytes())
    tmp.unlink()
    config = {
        "format": MODEL_FORMAT, "source": zm.source, "arch": zm.arch, "num_classes": zm.num_classes,
        "in_chans": zm.in_chans, "data_config": _jsonable(zm.data_config), "class_names": zm.class_names,
        "head_name": zm.head_name, "modifications": zm.modifications, "base": zm.base, "build_args": zm.build_args,
        "fingerprint": zm.fingerprint(),
    }
    atomic_write_json(out / CONFIG_FILE, config)
    return out


def _saved_config(path: Path) -> dict[str, Any]:
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise InspectnetError(f"model folder {path} has no {CONFIG_FILE}; expected a folder written by "
                              f"inspectnet (train, finetune, decompose) or a zoo model name")
    cfg = read_json(cfg_path, what="model config")
    if cfg.get("format") != MODEL_FORMAT:
        raise InspectnetError(f"{cfg_path} is not an inspectnet model config (format={cfg.get('format')!r})")
    return cfg


def _jsonable(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
