"""What an audit is asked to do (:class:`AuditConfig`) and the checks made before anything runs."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from inspectnet.core.errors import InvalidParameterError
from inspectnet.core.options import option, seed_option, validate

if TYPE_CHECKING:  # the command line reads the options without importing torch
    from inspectnet.models.zoo import ZooModel


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    """What to audit and how. ``eval_data`` defaults to ``data`` (then every number is in-sample).

    ``layers`` are probed (default: the model's stage outputs); ``layer`` is the one analysed by
    rules, receptive fields and dissection (default: the last probed layer; probed if not listed).
    The data's classes are mapped onto the model's by name or WordNet id, or by ``class_map``
    (``{"data class": model index or name}``; see :mod:`inspectnet.data.labels`). Every field is
    checked when the config is built (:func:`inspectnet.core.options.validate`).
    """

    data: str = option(help="labelled data the analyses are fitted on (folder, mnist5k:train, digits, ...)")
    eval_data: str | None = option(None, help="labelled data to evaluate on (default: DATA, in-sample)", flag="--eval")
    layers: list[str] | None = option(None, help="comma-separated layers to probe (default: the model's stage outputs)")
    layer: str | None = option(None, help="the layer that rules, receptive fields and dissection analyse (default: the "
                                          "last probed layer; probed if not in --layers)")
    limit: int | None = option(512, help="samples of DATA to use", minimum=1)
    eval_limit: int | None = option(None, help="samples of --eval data to use", minimum=1)
    k1: int = option(5, help="top features per sample (Algorithm 1)", minimum=1)
    k2: int = option(5, help="influential features per class", minimum=1)
    retrain_epochs: int = option(0, help="retrain the decomposed head N epochs", minimum=0)
    concepts: str | None = option(None, help="concept data for network dissection (shapes, or a concept folder)")
    concept_limit: int | None = option(200, help="concept images to dissect", minimum=1)
    concept_k: int = option(0, help="discover K concepts in the map the head pools, with their exact class importance "
                                    "(0: off)", minimum=0, flag="--discover-concepts", metavar="K")
    concept_method: str = option("nmf", help="how concepts are discovered: nmf or a TopK sparse autoencoder",
                                 choices=("nmf", "sae"))
    export: bool = option(False, help="export the decomposed model to ONNX and verify it")
    # the export ships the dense model instead of the decomposed one when the latter's accuracy falls
    # more than this below the dense model's (e.g. K of C classes with data: dense rows outscore sparse ones)
    export_max_drop: float = option(0.05, help="export the dense model instead when the decomposed one's accuracy is "
                                               "more than this below it (0.05 = 5 points)", minimum=0.0, maximum=1.0)
    attribution_images: int = option(6, help="images to explain with IG / Grad-CAM", minimum=1, flag="--images")
    ig_steps: int = option(32, help="Integrated Gradients steps", minimum=1)
    top_units: int = option(6, help="units shown with their receptive fields", minimum=1)
    # on by default: one forward + backward and batched few-step curves, a fraction of the rest of the audit
    trust_images: int = option(16, help="evaluation images on which the class evidence and Grad-CAM of the full model "
                                        "are compared with a random control by deletion and insertion (0 skips it)",
                               minimum=0)
    trust_steps: int = option(7, help="steps of the trust curves (a divisor of 28; their AUC is within "
                                      "(1 - k/28)/k of the 28-step curve's for a monotone curve)",
                              choices=(1, 2, 4, 7, 14, 28))
    # opt-in: faithfulness costs ~28 forward passes per image, method and model form
    explain_images: int = option(0, help="images on which every explanation of every model form (full, decomposed, "
                                         "slimmed, int8) is measured: deletion, insertion, ROAD, Integrated Gradients, "
                                         "the sanity cascade (0 skips it: it costs ~28 forward passes per image, "
                                         "method and form, about 75 s of CPU per 224-px Lite0 image)", minimum=0)
    deletion_steps: int = option(10, help="steps of the deletion and insertion curves", minimum=1)
    baseline: str = option("blur", help="what deleted pixels become: a blurred image or its mean colour",
                           choices=("blur", "mean"))
    sanity_images: int = option(8, help="images for the cascading-randomisation sanity check (0 skips it)", minimum=0)
    batch_size: int = option(32, help="images per forward pass", minimum=1)
    device: str = option("cpu", help="cpu, cuda[:N] or auto")
    seed: int = seed_option("seed of every sampled choice (subsets, retraining, baselines)")
    class_map: dict[str, int | str] | None = option(None, help="data class -> model index or class name", cli=False)
    command: str = option("", help="the command line that reproduces the audit", cli=False)

    def __post_init__(self) -> None:
        validate(self)


def default_layers(zm: ZooModel) -> list[str]:
    """The model's stage outputs (timm ``feature_info``), else its last convolution.

    Args:
        zm: the model.

    Returns:
        The layer names (``["last_conv"]`` when the model declares no stages).
    """
    info = getattr(zm.model, "feature_info", None)
    names: list[str] = []
    try:
        names = [f["module"] for f in info] if info is not None else []
    except (TypeError, KeyError):
        names = []
    known = {n for n, _ in zm.model.named_modules()}
    names = [n for n in names if n in known and n]
    return names or ["last_conv"]


def probed_layers(zm: ZooModel, config: AuditConfig) -> tuple[list[str], str]:
    """The layers the audit probes and the one it analyses (``config.layer``, else the last probed).

    Args:
        zm: the model.
        config: the audit's configuration.

    Returns:
        ``(probed layers, analysed layer)``.

    Raises:
        InvalidParameterError: no layer is left to probe besides ``pre_logits``, or ``layer`` names other
            than one layer.

    Examples:
        >>> from inspectnet.models.zoo import load_model
        >>> probed_layers(load_model("resnet18"), AuditConfig(data="digits", layers=["layer3"], layer="layer4"))
        (['layer3', 'layer4'], 'layer4')
    """
    from inspectnet.models.layers import PRE_LOGITS, resolve_layers

    layers = [n for n in resolve_layers(zm.model, config.layers or default_layers(zm), head_name=zm.head_name)
              if n != PRE_LOGITS]
    if config.layer is None:
        if not layers:
            raise InvalidParameterError("layers", "no layer to probe besides pre_logits; name one with {layers}")
        return layers, layers[-1]
    named = resolve_layers(zm.model, config.layer, head_name=zm.head_name)
    if len(named) != 1 or named[0] == PRE_LOGITS:
        raise InvalidParameterError("layer", f"{{layer={config.layer!r}}} names {len(named)} layer(s) "
                                             f"({', '.join(named)}); name one layer with spatial maps "
                                             f"(see `inspectnet layers MODEL`)")
    return (layers if named[0] in layers else [*layers, named[0]]), named[0]


def check_config(config: AuditConfig, zm: ZooModel | None = None) -> None:
    """Refuse, before anything runs, what the config points at that is not there (data, concept data, device).

    With ``zm`` also what needs the model (layer names, ``k1`` against its feature width). The values
    themselves were checked when the config was built.

    Args:
        config: the audit's config.
        zm: the model, when it is loaded.

    Returns:
        None.

    Examples:
        >>> check_config(AuditConfig(data="digits", k1=3, k2=4))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        inspectnet.core.errors.InvalidParameterError: k2=4 is larger than k1=3; the k2 influential features are ...
    """
    from inspectnet.analysis.heads.influence import check_k
    from inspectnet.core.devices import resolve_device
    from inspectnet.data import check_data_spec
    from inspectnet.data.concepts import check_concepts_spec

    check_k(config.k1, config.k2, config.k1 if zm is None else getattr(zm.head, "in_features", config.k1))
    for spec in (config.data, config.eval_data):
        if spec is not None:
            check_data_spec(spec)
    if config.concepts:
        check_concepts_spec(config.concepts)
    resolve_device(config.device)
    if zm is not None:
        probed_layers(zm, config)
