"""Building a zoo architecture: timm or torchvision by name, its input channels adapted, its classifier found.

The classifier is found in the module graph, and whether a hub can be reached for pretrained weights
is checked before any download.
"""

import difflib
import json
import socket
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inspectnet.core.errors import InspectnetError
from inspectnet.models.surgery import set_submodule

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)



def split_spec(spec: str) -> tuple[str, str]:
    """Split a model spec into its source and architecture, checking that the source knows the name.

    Args:
        spec: ``timm:NAME``, ``torchvision:NAME`` or a bare timm name.

    Returns:
        ``(source, arch)``.

    Raises:
        InspectnetError: the source is unknown, or it has no model of that name (the closest names are given).

    Examples:
        >>> split_spec("resnet18"), split_spec("torchvision:resnet18")
        (('timm', 'resnet18'), ('torchvision', 'resnet18'))
    """
    source, sep, arch = spec.partition(":")
    if not sep:
        source, arch = "timm", spec
    if source not in ("timm", "torchvision"):
        raise InspectnetError(f"model spec {spec!r}: unknown source {source!r}; expected timm:NAME, "
                              f"torchvision:NAME, a timm name, or a folder saved by inspectnet")
    names = timm_names() if source == "timm" else torchvision_names()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=5, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise InspectnetError(f"unknown {source} model {arch!r}{hint}")
    return source, arch



def timm_names() -> list[str]:
    """The model names timm can build.

    Returns:
        The names, as ``timm.list_models()`` gives them.
    """
    import timm

    return timm.list_models()



def torchvision_names() -> list[str]:
    """The classification model names torchvision can build.

    Returns:
        The names, as ``torchvision.models.list_models`` gives them.
    """
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)



def build_timm(arch: str, *, num_classes: int | None, in_chans: int | None, pretrained: bool,
               img_size: int | None = None, build_args: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Build a timm architecture and its preprocessing.

    Args:
        arch: the timm name.
        num_classes: classifier outputs (None: the architecture's default).
        in_chans: input channels (None: 3).
        pretrained: load the hub's weights.
        img_size: the square input size; architectures built for one size (patch grids, attention biases)
            are built for this one.
        build_args: further constructor arguments.

    Returns:
        ``(module, data_config)`` with timm's preprocessing keys.

    Raises:
        InspectnetError: the constructor does not take ``build_args`` or cannot be built for ``img_size``.

    Examples:
        >>> model, cfg = build_timm("vit_tiny_patch16_224", num_classes=2, in_chans=None, pretrained=False, img_size=64)
        >>> model.patch_embed.grid_size, cfg["input_size"]
        ((4, 4), (3, 64, 64))
    """
    import timm

    kwargs: dict[str, Any] = dict(build_args or {})
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    # TypeError: an argument the constructor does not take
    model = _built_or_refused(lambda: timm.create_model(arch, pretrained=pretrained, **kwargs),
                              f"timm's {arch} cannot be built with {kwargs}")
    fixed = fixed_input_size(model)
    if img_size is not None and fixed not in (None, (img_size, img_size)):
        # a patch embedding fixes its token grid and position table when the model is built
        model = _rebuilt_for_size(arch, fixed, img_size,
                                  lambda: timm.create_model(arch, pretrained=pretrained, img_size=img_size, **kwargs))
    cfg = dict(timm.data.resolve_model_data_config(model))
    if img_size is not None:  # the hub's preprocessing still names the size the weights were trained at
        cfg.update(input_size=(3, img_size, img_size))
    return model, with_channels(cfg, in_chans or 3)


def fixed_input_size(model: nn.Module) -> tuple[int, int] | None:
    """The (H, W) a model is built for when it takes no other size (patch grids, attention biases), else None.

    Args:
        model: a timm or torchvision module.

    Returns:
        ``(H, W)``, or None where any size that fits the strides works.

    Examples:
        >>> import timm
        >>> fixed_input_size(timm.create_model("vit_tiny_patch16_224")), fixed_input_size(timm.create_model("resnet18"))
        ((224, 224), None)
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("fixed_input_size"):  # timm marks every architecture whose build depends on the input size
        return (int(cfg["input_size"][1]), int(cfg["input_size"][2]))
    size = getattr(model, "image_size", None)  # torchvision's VisionTransformer
    return (size, size) if isinstance(size, int) else None


def _built_or_refused(build: Any, refusal: str, errors: tuple[type[Exception], ...] = (TypeError,)) -> nn.Module:
    """``build()``, with a constructor's refusal of its arguments (``errors``) raised as ``refusal: why``."""
    try:
        return build()
    except errors as exc:
        raise InspectnetError(f"{refusal}: {exc}") from exc


def _rebuilt_for_size(arch: str, fixed: tuple[int, int], img_size: int, build: Any) -> nn.Module:
    # a constructor refuses a size its patch grid or windows do not divide in any of these ways
    return _built_or_refused(build, f"{arch} is built for {fixed[0]}×{fixed[1]} px inputs and cannot be rebuilt for "
                                    f"--input-size {img_size}", (TypeError, ValueError, AssertionError, RuntimeError))


def parse_model_args(items: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` constructor arguments as typed (``--model-arg depth=4``), values read as JSON where they parse.

    Args:
        items: the ``KEY=VALUE`` strings.

    Returns:
        ``{key: value}``: numbers, booleans, lists and null as JSON reads them, anything else as a string.

    Raises:
        InspectnetError: an item without ``=`` or with an empty key.

    Examples:
        >>> parse_model_args(["depth=4", "patch_size=8", "global_pool=avg", "qkv_bias=false"])
        {'depth': 4, 'patch_size': 8, 'global_pool': 'avg', 'qkv_bias': False}
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InspectnetError(f"--model-arg {item!r}: expected KEY=VALUE, e.g. depth=4")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def build_torchvision(arch: str, *, num_classes: int | None, in_chans: int | None, pretrained: bool,
                      img_size: int | None = None, build_args: dict[str, Any] | None = None
                      ) -> tuple[nn.Module, dict[str, Any]]:
    """Build a torchvision architecture and the ImageNet preprocessing it was trained with.

    Args:
        arch: the torchvision name.
        num_classes: classifier outputs (None: 1000).
        in_chans: input channels (None: 3); other than 3 re-makes the first convolution.
        pretrained: load torchvision's default weights.
        img_size: the square input size; a ViT is built for it (its random weights only).
        build_args: refused: torchvision's constructors are used as the zoo defines them.

    Returns:
        ``(module, data_config)`` with timm's preprocessing keys.

    Raises:
        InspectnetError: ``build_args`` given, or a pretrained ViT asked for another size.

    Examples:
        >>> model, cfg = build_torchvision("resnet18", num_classes=3, in_chans=1, pretrained=False)
        >>> model.fc.out_features, cfg["input_size"]
        (3, (1, 224, 224))
    """
    import torchvision

    if build_args:
        raise InspectnetError(f"--model-arg is for timm architectures; torchvision's {arch} is built as the zoo "
                              f"defines it")
    if pretrained:
        model = torchvision.models.get_model(arch, weights="DEFAULT")
        head = find_head(model)
        old = model.get_submodule(head)
        if num_classes is not None and num_classes != old.out_features:
            set_submodule(model, head, nn.Linear(old.in_features, num_classes))
    else:
        kwargs = {"num_classes": num_classes} if num_classes is not None else {}
        model = torchvision.models.get_model(arch, weights=None, **kwargs)
    fixed = fixed_input_size(model)
    if img_size is not None and fixed not in (None, (img_size, img_size)):
        if pretrained:
            raise InspectnetError(f"torchvision's pretrained {arch} takes {fixed[0]}×{fixed[1]} px inputs only; "
                                  f"drop --input-size {img_size} or train without --pretrained")
        model = _rebuilt_for_size(arch, fixed, img_size,
                                  lambda: torchvision.models.get_model(arch, weights=None, image_size=img_size, **kwargs))
    if in_chans is not None and in_chans != 3:
        adapt_first_conv(model, in_chans)
    cfg = {"input_size": (3, 224, 224), "interpolation": "bilinear", "mean": IMAGENET_MEAN,
           "std": IMAGENET_STD, "crop_pct": 0.875, "crop_mode": "center"}
    return model, with_channels(cfg, in_chans or 3)



def adapt_first_conv(model: nn.Module, in_chans: int) -> None:
    """Give a torchvision model ``in_chans`` input channels (weights averaged over RGB, then tiled).

    Args:
        model: changed in place.
        in_chans: the new number of input channels.

    Raises:
        InspectnetError: the model has no ``Conv2d`` input layer.

    Examples:
        >>> m = nn.Sequential(nn.Conv2d(3, 4, 3)); adapt_first_conv(m, 1); m[0].in_channels
        1
    """
    name, conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if conv is None:
        raise InspectnetError("cannot change --in-chans: the model has no Conv2d input layer")
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None)
    with torch.no_grad():
        w = conv.weight.mean(dim=1, keepdim=True) * 3 / in_chans
        new.weight.copy_(w.repeat(1, in_chans, 1, 1))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    set_submodule(model, name, new)



def with_channels(cfg: dict[str, Any], in_chans: int) -> dict[str, Any]:
    """Fit mean/std and input_size to ``in_chans`` (grey models get the RGB average).

    Args:
        cfg: a data config (timm's keys).
        in_chans: the model's input channels.

    Returns:
        A new config.

    Examples:
        >>> cfg = {"input_size": (3, 8, 8), "mean": (0.2, 0.4, 0.6), "std": (0.5, 0.5, 0.5)}
        >>> with_channels(cfg, 1)["input_size"], [round(m, 6) for m in with_channels(cfg, 1)["mean"]]
        ((1, 8, 8), [0.4])
    """
    mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    if len(mean) != in_chans:
        mean = (sum(mean) / len(mean),) * in_chans
        std = (sum(std) / len(std),) * in_chans
    _, h, w = cfg["input_size"]
    return {**cfg, "input_size": (in_chans, h, w), "mean": mean, "std": std}



def find_head(model: nn.Module) -> str:
    """Dotted name of the final linear layer (the classifier whose input is f(x)).

    timm models answer ``get_classifier()``; torchvision ones keep it in ``fc``, ``classifier``
    or ``heads``; anything else falls back to the last ``nn.Linear``.

    Args:
        model: the network.

    Returns:
        The head's dotted name.

    Raises:
        InspectnetError: the model has no linear layer.

    Examples:
        >>> find_head(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
        '1'
    """
    names = {id(m): n for n, m in model.named_modules()}
    if hasattr(model, "get_classifier"):
        clf = model.get_classifier()
        if isinstance(clf, nn.Linear) and id(clf) in names:
            return names[id(clf)]
    for attr in ("fc", "classifier", "heads", "head"):
        sub = getattr(model, attr, None)
        if isinstance(sub, nn.Linear):
            return attr
        if isinstance(sub, nn.Module):
            linears = [m for m in sub.modules() if isinstance(m, nn.Linear)]
            if linears:
                return names[id(linears[-1])]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InspectnetError(f"{type(model).__name__} has no linear classifier layer to treat as its head")
    return linears[-1]



def check_hub_reachable(source: str, arch: str, timeout: float = 3.0) -> None:
    """Fail fast with a clear message when pretrained weights must be downloaded but cannot be.

    Weights already in the local hub cache need no network; otherwise the hub host must answer a
    TCP connect within ``timeout`` seconds (DNS included, run in a thread so it cannot hang).

    Args:
        source: ``"timm"`` or ``"torchvision"``.
        arch: the model name.
        timeout: seconds to wait for the hub host.

    Raises:
        InspectnetError: the weights are not cached and the hub host cannot be reached.
    """
    if pretrained_cached(source, arch):
        return
    host = "huggingface.co" if source == "timm" else "download.pytorch.org"
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1.0)
    if not ok:
        raise InspectnetError(f"--pretrained needs to download {source}:{arch} weights from {host}, which "
                              f"cannot be reached (offline?); pass --weights PATH with a local file instead")



def pretrained_cached(source: str, arch: str) -> bool:
    """Whether the pretrained weights of ``source:arch`` are already in the local hub cache.

    Args:
        source: ``"timm"`` or ``"torchvision"``.
        arch: the model name.

    Returns:
        True when no download is needed.
    """
    if source == "timm":
        import timm

        cfg = timm.create_model(arch, pretrained=False).pretrained_cfg
        hub_id = cfg.get("hf_hub_id")
        if not hub_id:
            return False
        from huggingface_hub import try_to_load_from_cache

        return any(isinstance(try_to_load_from_cache(hub_id, f), str)
                   for f in ("model.safetensors", "pytorch_model.bin"))
    import torchvision

    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    return (Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]).is_file()
