"""What an audit stage declares: its name, card title, cache parameters, inputs, and how it runs and renders."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from inspectnet.pipelines.audit.config import AuditConfig
from inspectnet.pipelines.audit.context import AuditContext
from inspectnet.reports.card.sections import SectionBlocks


@dataclasses.dataclass(frozen=True)
class Stage:
    """One audit stage and every fact the driver needs about it.

    ``params(config)`` gives the parameters that change the stage's result (and nothing else: they
    key its cache); ``needs`` are earlier stages that must have succeeded; ``uses`` are earlier
    stages whose results it reads when they succeeded (a failure is tolerated). The keys of both
    feed its cache key. ``enabled(config)`` says whether this audit runs it at all; ``writes_folder``
    whether it leaves files in ``DIR/<name>`` (a deleted folder is recomputed, not trusted).
    ``blocks(doc, result)`` renders the stage's section of the card from its result in card.json.
    """

    name: str
    title: str
    run: Callable[[AuditContext], Mapping[str, Any]]  # a stage's typed result (a TypedDict), stored in card.json
    params: Callable[[AuditConfig], dict[str, Any]]
    blocks: SectionBlocks
    needs: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()
    writes_folder: bool = True
    enabled: Callable[[AuditConfig], bool] = lambda _config: True
    resumable: bool = False  # an interrupted run (same key) continues from its files instead of clearing them
    distributed: bool = False  # under torchrun every rank runs it (its data pass is shared out)
