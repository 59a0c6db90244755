"""The concepts stage: concepts discovered in the map the head pools, with their exact class importance."""

from __future__ import annotations

from typing import Any

from inspectnet.pipelines.audit.context import AuditContext


def stage_concepts(ctx: AuditContext) -> dict[str, Any]:
    from inspectnet.analysis.concepts.discover import concepts_summary, discover_concepts
    from inspectnet.analysis.concepts.pictures import write_concepts

    cfg = ctx.config
    data = ctx.eval_dataset()
    res = discover_concepts(ctx.zm, data, "last_stage", cfg.concept_method, cfg.concept_k, cfg.seed,
                            batch_size=cfg.batch_size, device=cfg.device)
    paths = write_concepts(res, ctx.out / "concepts", model=ctx.zm, data=data, device=cfg.device)
    return {**concepts_summary(res),
            "figures": [{"path": ctx.rel(paths["concepts"]), "caption": "each concept's top images, its region "
                                                                        "highlighted"},
                        {"path": ctx.rel(paths["crops"]), "caption": "each concept's top images around its peak"}]}
