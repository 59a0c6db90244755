"""The sparsity stage: the activation sparsity measures of every probed layer."""

from __future__ import annotations

from typing import Any

from inspectnet.pipelines.audit.context import AuditContext
from inspectnet.pipelines.audit.stage import Stage
from inspectnet.reports.blocks import Block, Table


def run(ctx: AuditContext) -> dict[str, Any]:
    """The sparsity measures of every probed layer, on the evaluation record."""
    from inspectnet.analysis.sparsity import record_sparsity

    _, ev = ctx.records()
    return {"rows": [m.to_dict() for m in record_sparsity(ev)]}


# card.json field names of a sparsity row, in the card's column order
SPARSITY_KEYS = ("hoyer", "lifetime_kurtosis", "population_kurtosis", "treves_rolls_population",
                 "treves_rolls_lifetime", "activity_sparseness")


def blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
    """One row of sparsity measures per layer."""
    return [Table(["layer", *SPARSITY_KEYS], [[row["layer"], *[row[k] for k in SPARSITY_KEYS]] for row in r["rows"]],
                  sortable=True)]


STAGE = Stage("sparsity", "Activation sparsity", run, blocks=blocks, params=lambda c: {}, needs=("probe",),
              writes_folder=False)
