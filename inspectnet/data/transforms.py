"""Preprocessing built from a model's data config (timm's keys), for any channel count."""

from collections.abc import Callable
from typing import Any

from PIL import Image

from inspectnet.core.errors import InspectnetError
from inspectnet.core.images import to_8bit


def build_transform(data_config: dict[str, Any]) -> Callable[[Image.Image], "object"]:
    """PIL image -> tensor: convert to the model's channels (16-bit grey scaled, not clipped), resize/crop, normalize.

    Args:
        data_config: timm's data config (``input_size``, ``mean``, ``std``, ``interpolation``,
            ``crop_pct``, ``crop_mode``).

    Returns:
        The transform.

    Raises:
        InspectnetError: the model takes neither 1 nor 3 channels.

    Examples:
        >>> t = build_transform({"input_size": (1, 28, 28), "mean": (0.5,), "std": (0.5,),
        ...                      "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"})
        >>> tuple(t(Image.new("RGB", (40, 30))).shape)
        (1, 28, 28)
    """
    from timm.data import create_transform
    from torchvision import transforms

    in_chans = data_config["input_size"][0]
    mode = {1: "L", 3: "RGB"}.get(in_chans)
    if mode is None:
        raise InspectnetError(f"the model takes {in_chans} channels; images can only feed 1- or 3-channel "
                              f"models (check --in-chans)")
    core = create_transform(
        input_size=tuple(data_config["input_size"]), interpolation=data_config.get("interpolation", "bilinear"),
        mean=tuple(data_config["mean"]), std=tuple(data_config["std"]),
        crop_pct=data_config.get("crop_pct", 1.0), crop_mode=data_config.get("crop_mode", "center"))
    return transforms.Compose([transforms.Lambda(lambda im: to_8bit(im).convert(mode)), core])
