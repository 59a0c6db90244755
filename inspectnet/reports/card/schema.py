"""The card.json schema as types: what :func:`~inspectnet.reports.card.build_card` writes and the renderers read.

``schema_version`` names the layout. This inspectnet writes :data:`CARD_SCHEMA_VERSION` and reads exactly
the versions in :data:`READABLE_VERSIONS`; :func:`~inspectnet.reports.card.check_card` refuses any other.

- 2: every section carries its stage's title; the rules section carries the readable tree's selection
  (the size–fidelity curve) beside the full tree.
- 1: earlier cards: a section may lack its title (the stage's name is shown), and the rules section may
  hold one pruned tree without a selection.
"""

from collections.abc import Mapping, Sequence
from typing import Any, NotRequired, Protocol, TypedDict

CARD_SCHEMA = "inspectnet-model-card"
CARD_SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)


class CardModel(TypedDict):
    """The audited model's identity."""

    spec: str
    source: str
    arch: str
    base: str | None
    num_classes: int
    in_chans: int
    input_size: list[int]
    head: str
    fingerprint: str
    class_names: list[str]
    modifications: list[str | None]


class CardData(TypedDict):
    """The data the analyses were fitted on and evaluated on."""

    train: str
    eval: str
    limit: int | None
    in_sample: bool
    recomputed: NotRequired[str]  # why every stage ran again: the data folder changed since the last audit


class CardSection(TypedDict):
    """One audit stage's entry: its status and, when it succeeded, its result."""

    title: str
    status: str
    error: NotRequired[str]
    result: NotRequired[dict[str, Any]]
    seconds: NotRequired[float]
    cached: NotRequired[bool]


class CardTiming(TypedDict):
    """How long the audit took, in seconds: in all, in stages run, in stages read from the cache."""
    total_seconds: float
    stages_run_seconds: float
    stages_cached_seconds: float


class CardReproduce(TypedDict):
    """How to remake the card: the audit command, the commands that made the model, the library versions."""
    command: str
    model_made_by: list[str]
    versions: dict[str, str]


class CardDocument(TypedDict):
    """card.json, version :data:`CARD_SCHEMA_VERSION`."""

    schema: str
    schema_version: int
    generated: str
    model: CardModel
    data: CardData
    config: dict[str, Any]
    sections: dict[str, CardSection]
    timing: CardTiming
    reproduce: CardReproduce


class AuditedModel(Protocol):
    """What the card reads of the audited model (a ``ZooModel`` or its ``ModelAbout``)."""

    spec: str
    source: str
    arch: str
    base: str | None
    num_classes: int
    in_chans: int
    data_config: Mapping[str, Any]
    head_name: str
    class_names: Sequence[str]
    modifications: Sequence[Mapping[str, Any]]


class AuditSettings(Protocol):
    """What the card reads of the audit's configuration (an ``AuditConfig``, a dataclass)."""

    data: str
    eval_data: str | None
    limit: int | None
    command: str
