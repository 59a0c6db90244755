"""Layer addresses: dotted ``named_modules()`` paths, globs, aliases, and listing with output shapes.

Aliases: ``pre_logits`` (the input of the classifier, i.e. f(x)), ``head`` (the classifier),
``last_conv`` (the last ``Conv2d``) and ``last_stage`` (the last top-level block before global
pooling and the head: the feature extractor's post-activation output, e.g. ``layer4`` of a ResNet,
``bn2`` (batch norm + activation) of a timm EfficientNet, ``features`` of a torchvision VGG).
Unknown names fail with the closest real ones.
"""

import contextlib
import difflib
import fnmatch
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from inspectnet.core.devices import resolve_device
from inspectnet.core.errors import InspectnetError

PRE_LOGITS = "pre_logits"
ALIASES = (PRE_LOGITS, "head", "last_conv", "last_stage")
NORMALISATIONS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)  # BatchNorm*, InstanceNorm*, ...
# top-level modules that follow the last stage without transforming its maps per unit
_AFTER_LAST_STAGE = (nn.Identity, nn.Flatten, nn.Dropout, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@contextlib.contextmanager
def model_state(model: nn.Module, *, device: str | torch.device | None = None,
                training: bool | None = None) -> Iterator[nn.Module]:
    """Run a block with ``model`` on ``device`` and/or in train (True) or eval (False) mode, then put it back.

    On exit, normal or not, the model returns to the device it was on and every submodule gets
    back its own ``training`` flag (also when the block changed them, as a training loop does).
    Weights changed inside the block stay changed. A bad ``device`` fails before anything moves.

    Args:
        model: the network.
        device: where to run the block (None: where the model is).
        training: the mode of every submodule inside the block (None: unchanged).

    Yields:
        ``model`` itself.

    Examples:
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
        >>> with model_state(m, device="cpu", training=False):
        ...     m[1].training
        False
        >>> m[1].training, next(m.parameters()).device.type
        (True, 'cpu')
    """
    target = resolve_device(device) if device is not None else None
    home = _home_device(model) if target is not None else None
    flags = [(m, m.training) for m in model.modules()]
    try:
        if target is not None:
            model.to(target)
        if training is not None:
            model.train(training)
        yield model
    finally:
        if home is not None:
            model.to(home)
        for m, flag in flags:
            m.training = flag


def _home_device(model: nn.Module) -> torch.device | None:
    """The one device holding the model's tensors (None for a model without any)."""
    devices = {t.device for t in (*model.parameters(), *model.buffers())}
    if len(devices) > 1:
        raise InspectnetError(f"the model's tensors are spread over {', '.join(sorted(map(str, devices)))}; "
                              f"move it to one device first")
    return next(iter(devices), None)


def eval_mode(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """Put every submodule in eval mode, restoring each one's own flag afterwards (even on error).

    Args:
        model: the network.

    Returns:
        A context manager that yields ``model``.

    Examples:
        >>> m = nn.Dropout().train()
        >>> with eval_mode(m):
        ...     m.training
        False
        >>> m.training
        True
    """
    return model_state(model, training=False)


def resolve_layers(model: nn.Module, layers: Sequence[str | nn.Module] | str, *,
                   head_name: str | None = None) -> list[str]:
    """Canonical dotted names for layer specs (names, globs, aliases, modules), in the order given.

    ``pre_logits`` stays as the alias (it names a tensor, the head's input, not a module).

    Args:
        model: the network.
        layers: layer specs, or one comma-separated string of them.
        head_name: the classifier's dotted name (found when None), for the aliases that need it.

    Returns:
        The dotted names, duplicates removed.

    Raises:
        InspectnetError: no layer is given, or a spec matches no layer (the closest names are given).

    Examples:
        >>> from torchvision.models import resnet18
        >>> resolve_layers(resnet18(), "layer4.*.conv2,last_conv,last_stage")
        ['layer4.0.conv2', 'layer4.1.conv2', 'layer4']
    """
    if isinstance(layers, str):
        layers = [s.strip() for s in layers.split(",") if s.strip()]
    if not layers:
        raise InspectnetError("no layers given; name at least one (see `inspectnet layers MODEL`)")
    names = [n for n, _ in model.named_modules() if n]
    by_id = {id(m): n for n, m in model.named_modules() if n}
    out: list[str] = []
    for spec in layers:
        for name in _resolve_one(model, spec, names, by_id, head_name):
            if name not in out:
                out.append(name)
    return out


def _resolve_one(model: nn.Module, spec: str | nn.Module, names: list[str], by_id: dict[int, str],
                 head_name: str | None) -> list[str]:
    if isinstance(spec, nn.Module):
        if id(spec) not in by_id:
            raise InspectnetError(f"module {type(spec).__name__} is not part of the model")
        return [by_id[id(spec)]]
    if spec == PRE_LOGITS:
        return [PRE_LOGITS]
    if spec == "head":
        if head_name is None:
            from inspectnet.models.zoo import find_head

            head_name = find_head(model)
        return [head_name]
    if spec == "last_conv":
        convs = [n for n in names if isinstance(model.get_submodule(n), nn.Conv2d)]
        if not convs:
            raise InspectnetError("alias last_conv: the model has no Conv2d layer")
        return [convs[-1]]
    if spec == "last_stage":
        return [last_stage(model, head_name)]
    if spec in names:
        return [spec]
    if any(ch in spec for ch in "*?["):
        hits = fnmatch.filter(names, spec)
        if hits:
            return hits
        raise InspectnetError(f"layer pattern {spec!r} matches no layer; see `inspectnet layers MODEL`")
    close = difflib.get_close_matches(spec, names + list(ALIASES), n=5, cutoff=0.6)
    hint = f"; closest: {', '.join(close)}" if close else "; see `inspectnet layers MODEL`"
    raise InspectnetError(f"unknown layer {spec!r}{hint}")


def last_stage(model: nn.Module, head_name: str | None = None) -> str:
    """The last top-level child of ``model`` before its head (the ``last_stage`` alias).

    Global pooling, flattening, dropout, identities, top-level LayerNorms and a second classifier are
    skipped: this is the output the head's pooled features come from. What runs after a top-level global
    pooling (MobileNetV3's conv head) and timm's ``pre_logits`` (layers that timm counts as the head's,
    e.g. VGG's 7×7 ConvMlp, which folds the map into one position) belong to the head, so the stage is
    the last spatial map before them.

    Args:
        model: the network.
        head_name: the classifier's dotted name (found when None).

    Returns:
        The child's dotted name (the last block of a ``ModuleList``).

    Raises:
        InspectnetError: the model has no top-level block before its head.

    Examples:
        >>> from torchvision.models import resnet18, vgg11
        >>> last_stage(resnet18()), last_stage(vgg11())
        ('layer4', 'features')
        >>> import timm; last_stage(timm.create_model("deit_tiny_distilled_patch16_224"))  # not its distillation head
        'blocks'
        >>> last_stage(timm.create_model("vgg11")), last_stage(timm.create_model("mobilenetv3_small_050"))
        ('features', 'blocks')
    """
    if head_name is None:
        from inspectnet.models.zoo import find_head

        head_name = find_head(model)
    classes = getattr(model.get_submodule(head_name), "out_features", None)
    children = list(model.named_children())
    pools = [i for i, (_, child) in enumerate(children) if _global_pool(child)]
    if pools and pools[-1] > 0:  # what follows the global pooling is part of the head
        children = children[:pools[-1]]
    for name, child in reversed(children):
        skipped = isinstance(child, (*_AFTER_LAST_STAGE, nn.LayerNorm)) or _global_pool(child) \
            or _second_head(child, classes) or name == PRE_LOGITS
        if name != head_name and not head_name.startswith(name + ".") and not skipped:
            # a ModuleList is never called itself (EVA loops over its blocks): its last block is the stage's output
            return f"{name}.{len(child) - 1}" if isinstance(child, nn.ModuleList) and len(child) else name
    raise InspectnetError("alias last_stage: the model has no top-level block before its head; name a layer")


def _global_pool(child: nn.Module) -> bool:
    """A top-level pooling module (torch's adaptive pools, timm's SelectAdaptivePool2d, ...)."""
    return type(child).__name__.endswith("Pool2d")


def _second_head(child: nn.Module, classes: int | None) -> bool:
    """A classifier beside the head (a distillation head).

    Its last linear layer gives the classes, and it has no convolution. Transformers' top-level
    LayerNorms (over tokens, or over the pooled vector) are skipped with it.
    """
    linears = [m for m in child.modules() if isinstance(m, nn.Linear)]
    return bool(linears) and linears[-1].out_features == classes and \
        not any(isinstance(m, nn.modules.conv._ConvNd) for m in child.modules())


def following_normalisation(model: nn.Module, name: str) -> str | None:
    """The normalisation layer defined right after ``name`` (outside it), or None.

    A convolution or linear layer followed by one has an output whose scale the normalisation undoes.

    Args:
        model: the network.
        name: a layer's dotted name.

    Returns:
        The normalisation's dotted name, or None.

    Examples:
        >>> from torchvision.models import resnet18
        >>> following_normalisation(resnet18(), "layer4.1.conv2"), following_normalisation(resnet18(), "layer4")
        ('layer4.1.bn2', None)
    """
    names = [n for n, _ in model.named_modules() if n]
    after = [n for n in names[names.index(name) + 1:] if not n.startswith(name + ".")]
    if after and isinstance(model.get_submodule(after[0]), NORMALISATIONS):
        return after[0]
    return None


def list_layers(model: nn.Module, input_size: Sequence[int]) -> list[dict]:
    """Every named module with its type, output shape (one dummy forward of batch 1) and parameter count.

    Args:
        model: the network.
        input_size: (C, H, W) of the dummy input.

    Returns:
        One ``{"name", "type", "output_shape", "params"}`` per module, in definition order.

    Examples:
        >>> from torchvision.models import resnet18
        >>> rows = list_layers(resnet18(), (3, 64, 64)); rows[-1]
        {'name': 'fc', 'type': 'Linear', 'output_shape': [1, 1000], 'params': 513000}
    """
    shapes: dict[str, list[int]] = {}
    handles = []

    def hook(name: str):
        def fn(_m, _inp, out):
            t = first_tensor(out)
            if t is not None and name not in shapes:
                shapes[name] = list(t.shape)
        return fn

    named = [(n, m) for n, m in model.named_modules() if n]
    try:
        for n, m in named:
            handles.append(m.register_forward_hook(hook(n)))
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with eval_mode(model), torch.inference_mode():
            model(torch.zeros(1, *input_size, device=device))
    finally:
        for h in handles:
            h.remove()
    return [{"name": n, "type": type(m).__name__, "output_shape": shapes.get(n),
             "params": sum(p.numel() for p in m.parameters())}
            for n, m in named]


def first_tensor(out: object) -> torch.Tensor | None:
    """The first tensor in a module output (tensor, tuple/list or dict of them), else None.

    Args:
        out: a module's output.

    Returns:
        The tensor, or None.

    Examples:
        >>> first_tensor(("x", {"a": torch.ones(1)}))
        tensor([1.])
    """
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return next((t for t in map(first_tensor, out) if t is not None), None)
    if isinstance(out, dict):
        return next((t for t in map(first_tensor, out.values()) if t is not None), None)
    return None


def fast_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the memory layout the CPU convolution kernels run fastest on.

    A batch of images (B, C, H, W) on the CPU becomes channels-last (the same values); anything else is returned as it
    is.

    The convolutions then skip a layout change per layer: EfficientNet-Lite0 at 224 px runs in about half the
    CPU time, ResNet18 in about 0.7 of it, ConvNeXt unchanged; outputs agree to float rounding.

    Args:
        x: the model's input.

    Returns:
        ``x``, channels-last where that helps.

    >>> fast_input(torch.zeros(2, 3, 4, 4)).is_contiguous(memory_format=torch.channels_last)
    True
    """
    if x.dim() == 4 and x.device.type == "cpu":
        return x.contiguous(memory_format=torch.channels_last)
    return x
