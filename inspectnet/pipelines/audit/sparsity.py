"""The sparsity stage: the activation sparsity measures of every probed layer."""

from __future__ import annotations

from typing import Any

from inspectnet.pipelines.audit.context import AuditContext


def stage_sparsity(ctx: AuditContext) -> dict[str, Any]:
    from inspectnet.analysis.sparsity import record_sparsity

    _, ev = ctx.records()
    return {"rows": [m.to_dict() for m in record_sparsity(ev)]}

