"""What an audit is asked to do (:class:`AuditConfig`) and the checks made before anything runs."""

from __future__ import annotations

import dataclasses

from inspectnet.core.devices import resolve_device
from inspectnet.core.errors import InspectnetError
from inspectnet.data import check_data_spec
from inspectnet.models.layers import PRE_LOGITS, resolve_layers
from inspectnet.models.zoo import ZooModel


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    """What to audit and how. ``eval_data`` defaults to ``data`` (then every number is in-sample).

    ``layers`` are probed (default: the model's stage outputs); ``layer`` is the one analysed by
    rules, receptive fields and dissection (default: the last probed layer; probed if not listed).
    The data's classes are mapped onto the model's by name or WordNet id, or by ``class_map``
    (``{"data class": model index or name}``; see :mod:`inspectnet.data.labels`).
    """

    data: str
    eval_data: str | None = None
    layers: list[str] | None = None
    layer: str | None = None
    limit: int | None = 512
    eval_limit: int | None = None
    k1: int = 5
    k2: int = 5
    retrain_epochs: int = 0
    concepts: str | None = None
    concept_limit: int | None = 200
    concept_k: int = 0  # opt-in: concepts discovered in the map the head pools (0: none)
    concept_method: str = "nmf"
    export: bool = False
    # the export ships the dense model instead of the decomposed one when the latter's accuracy falls
    # more than this below the dense model's (e.g. K of C classes with data: dense rows outscore sparse ones)
    export_max_drop: float = 0.05
    attribution_images: int = 6
    ig_steps: int = 32
    top_units: int = 6
    explain_images: int = 0  # opt-in: faithfulness costs ~28 forward passes per image, method and model form
    deletion_steps: int = 10
    baseline: str = "blur"
    sanity_images: int = 8
    batch_size: int = 32
    device: str = "cpu"
    seed: int = 0
    class_map: dict[str, int | str] | None = None
    command: str = ""


def default_layers(zm: ZooModel) -> list[str]:
    """The model's stage outputs (timm ``feature_info``), else its last convolution."""
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

    >>> from inspectnet.models.zoo import load_model
    >>> probed_layers(load_model("resnet18"), AuditConfig(data="digits", layers=["layer3"], layer="layer4"))
    (['layer3', 'layer4'], 'layer4')
    """
    layers = [n for n in resolve_layers(zm.model, config.layers or default_layers(zm), head_name=zm.head_name)
              if n != PRE_LOGITS]
    if config.layer is None:
        if not layers:
            raise InspectnetError("no layer to probe besides pre_logits; name one with --layers")
        return layers, layers[-1]
    named = resolve_layers(zm.model, config.layer, head_name=zm.head_name)
    if len(named) != 1 or named[0] == PRE_LOGITS:
        raise InspectnetError(f"--layer {config.layer!r} names {len(named)} layer(s) ({', '.join(named)}); "
                              f"name one layer with spatial maps (see `inspectnet layers MODEL`)")
    return (layers if named[0] in layers else [*layers, named[0]]), named[0]


def check_config(config: AuditConfig, zm: ZooModel | None = None) -> None:
    """Refuse, before anything runs, the arguments that would make a stage impossible; with ``zm``
    also those that need the model (layer names, ``k1`` against its feature width).

    >>> from inspectnet.models.zoo import load_model
    >>> check_config(AuditConfig(data="digits", limit=0))
    Traceback (most recent call last):
    ...
    inspectnet.core.errors.InspectnetError: --limit must be at least 1, got 0
    """
    from inspectnet.analysis.heads.influence import check_k
    from inspectnet.data.concepts import check_concepts_spec

    at_least = (("--limit", config.limit, 1), ("--eval-limit", config.eval_limit, 1),
                ("--retrain-epochs", config.retrain_epochs, 0), ("--concept-limit", config.concept_limit, 1),
                ("--images", config.attribution_images, 1), ("--ig-steps", config.ig_steps, 1),
                ("--top-units", config.top_units, 1), ("--batch-size", config.batch_size, 1))
    for option, value, low in at_least:
        if value is not None and value < low:
            raise InspectnetError(f"{option} must be at least {low}, got {value}")
    if not 0.0 <= config.export_max_drop <= 1.0:
        raise InspectnetError(f"--export-max-drop must be an accuracy difference in [0, 1], got {config.export_max_drop}")
    check_k(config.k1, config.k2, config.k1 if zm is None else getattr(zm.head, "in_features", config.k1))
    for spec in (config.data, config.eval_data):
        if spec is not None:
            check_data_spec(spec)
    if config.concepts:
        check_concepts_spec(config.concepts)
    resolve_device(config.device)
    if zm is not None:
        probed_layers(zm, config)

