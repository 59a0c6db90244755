"""The linear-probes stage: how linearly decodable the classes are at each probed layer."""

from __future__ import annotations

from typing import Any

from inspectnet.pipelines.audit.context import AuditContext


def stage_linear_probes(ctx: AuditContext) -> dict[str, Any]:
    from inspectnet.analysis.linprobe import linear_probes, plot

    train, ev = ctx.records()
    res = linear_probes(train, ev)
    path = plot(res, ctx.out / "linear_probes" / "linear_probes.png")
    return {"rows": res.rows, "model_accuracy": res.model_accuracy, "n_train": res.n_train, "n_eval": res.n_eval,
            "figures": [{"path": ctx.rel(path), "caption": "linear-probe accuracy across depth"}]}

