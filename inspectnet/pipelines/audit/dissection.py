"""The dissection stage: concept detectors among the analysed layer's units (network dissection)."""

from __future__ import annotations

from typing import Any, TypedDict

from inspectnet.core.distributed import world
from inspectnet.pipelines.audit.context import AuditContext
from inspectnet.pipelines.audit.stage import Stage
from inspectnet.reports.blocks import Block, Table


class DissectionResult(TypedDict):
    """The dissection stage's result in card.json: detectors per analysed layer."""

    data: str
    num_images: int
    iou_threshold: float
    quantile: float
    layers: dict[str, dict[str, Any]]


def run(ctx: AuditContext) -> DissectionResult:
    """Network dissection of the analysed layer against the concept data (every rank under torchrun).

    Args:
        ctx: the audit's context (model, config, data, output folder, earlier stages' results).

    Returns:
        The stage's result, as card.json stores it.
    """
    from inspectnet.analysis.dissect.dissection import dissect
    from inspectnet.analysis.dissect.pages import write_dissection
    from inspectnet.data.concepts import load_concepts

    cfg = ctx.config
    data = load_concepts(cfg.concepts)
    res = dissect(ctx.zm, data, [ctx.layer], limit=cfg.concept_limit, batch_size=cfg.batch_size,
                  device=cfg.device, show_progress=None, num_workers=ctx.num_workers, shard_order=ctx.shard_order)
    if world()[1] == 0:  # every rank holds the same result
        write_dissection(res, ctx.out / "dissection")
    layers = {k: {kk: v[kk] for kk in ("num_units", "detectors", "unique_detectors", "unique_by_category",
                                       "detector_concepts", "layout")} for k, v in res.layers.items()}
    return {"data": res.data, "num_images": res.num_images, "iou_threshold": res.iou_threshold,
            "quantile": res.quantile, "layers": layers}


def blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
    """Detectors and unique concepts per layer, and where each layer's units were read (tokens excluded).

    Args:
        doc: the card document.
        r: this stage's result.

    Returns:
        The section's blocks.
    """
    from inspectnet.models.layout import Layout

    return [Table(["layer", "units", "positions", "detectors", "unique concepts", "concepts"],
                  [[k, v["num_units"], Layout.from_dict(v["layout"]).describe() if v.get("layout") else "",
                    v["detectors"], v["unique_detectors"], ", ".join(v["detector_concepts"])]
                   for k, v in r["layers"].items()])]


STAGE = Stage("dissection", "Concept detectors (network dissection)", run, blocks=blocks,
              params=lambda c: {"concepts": c.concepts, "limit": c.concept_limit}, needs=("probe",),
              enabled=lambda c: bool(c.concepts), distributed=True)
