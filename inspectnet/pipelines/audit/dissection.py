"""The dissection stage: concept detectors among the analysed layer's units (network dissection)."""

from __future__ import annotations

from typing import Any

from inspectnet.core.distributed import world
from inspectnet.pipelines.audit.context import AuditContext


def stage_dissection(ctx: AuditContext) -> dict[str, Any]:
    from inspectnet.analysis.dissect.dissection import dissect, write_dissection
    from inspectnet.data.concepts import load_concepts

    cfg = ctx.config
    data = load_concepts(cfg.concepts)
    res = dissect(ctx.zm, data, [ctx.layer], limit=cfg.concept_limit, batch_size=cfg.batch_size,
                  device=cfg.device, show_progress=None, num_workers=ctx.num_workers, shard_order=ctx.shard_order)
    if world()[1] == 0:  # every rank holds the same result
        write_dissection(res, ctx.out / "dissection")
    layers = {k: {kk: v[kk] for kk in ("num_units", "detectors", "unique_detectors", "unique_by_category",
                                       "detector_concepts")} for k, v in res.layers.items()}
    return {"data": res.data, "num_images": res.num_images, "iou_threshold": res.iou_threshold,
            "quantile": res.quantile, "layers": layers}

