"""The sparsity stage: the activation sparsity measures of every probed layer."""

from __future__ import annotations

from typing import Any, TypedDict

from inspectnet.pipelines.audit.context import AuditContext
from inspectnet.pipelines.audit.stage import Stage
from inspectnet.reports.blocks import Block, Table


class SparsityResult(TypedDict):
    """The sparsity stage's result in card.json: one row of measures per probed layer."""

    rows: list[dict[str, Any]]


def run(ctx: AuditContext) -> SparsityResult:
    """The sparsity measures of every probed layer, on the evaluation record.

    Args:
        ctx: the audit's context (model, config, data, output folder, earlier stages' results).

    Returns:
        The stage's result, as card.json stores it.
    """
    from inspectnet.analysis.sparsity import record_sparsity

    _, ev = ctx.records()
    return {"rows": [m.to_dict() for m in record_sparsity(ev)]}


# card.json field names of a sparsity row, in the card's column order
SPARSITY_KEYS = ("hoyer", "lifetime_kurtosis", "population_kurtosis", "treves_rolls_population",
                 "treves_rolls_lifetime", "activity_sparseness")


def blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
    """One row of sparsity measures per layer.

    Args:
        doc: the card document.
        r: this stage's result.

    Returns:
        The section's blocks.
    """
    return [Table(["layer", *SPARSITY_KEYS], [[row["layer"], *[row[k] for k in SPARSITY_KEYS]] for row in r["rows"]],
                  sortable=True)]


STAGE = Stage("sparsity", "Activation sparsity", run, blocks=blocks, params=lambda c: {}, needs=("probe",),
              writes_folder=False)
