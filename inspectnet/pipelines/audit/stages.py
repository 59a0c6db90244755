"""The audit's stages, in the order they run and appear in the card.

Adding a stage: one module that declares ``STAGE`` (see :class:`~inspectnet.pipelines.audit.stage.Stage`)
and one line here.
"""

from __future__ import annotations

from inspectnet.pipelines.audit import (
    attributions,
    concepts,
    decomposition,
    dissection,
    explanations,
    export,
    linear_probes,
    probe,
    rules,
    sparsity,
    trust,
)
from inspectnet.pipelines.audit.stage import Stage

STAGES: tuple[Stage, ...] = (
    probe.STAGE,
    decomposition.STAGE,
    rules.STAGE,
    sparsity.STAGE,
    linear_probes.STAGE,
    attributions.STAGE,
    trust.STAGE,
    explanations.STAGE,
    dissection.STAGE,
    concepts.STAGE,
    export.STAGE,
)
