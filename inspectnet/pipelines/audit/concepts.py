"""The concepts stage: concepts discovered in the map the head pools, with their exact class importance.

Opt-in (``--discover-concepts K``): NMF or TopK-autoencoder concepts of the evaluation data's cells in
``last_stage``, their stability over three seeds, each class's logit split over them, and the atlas
pictures under ``DIR/concepts``.
"""

from __future__ import annotations

from typing import Any

from inspectnet.core.tables import format_percent, format_value
from inspectnet.pipelines.audit.context import AuditContext
from inspectnet.pipelines.audit.stage import Stage
from inspectnet.reports.blocks import Block, Paragraph, Table


def run(ctx: AuditContext) -> dict[str, Any]:
    """Discover ``concept_k`` concepts on the evaluation data and write their files and pictures.

    Args:
        ctx: the audit's context (model, config, data, output folder, earlier stages' results).

    Returns:
        The stage's result, as card.json stores it.
    """
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


def blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
    """The run's quality, each concept's name, purest class, importance and stability, and each class's top concepts.

    Args:
        doc: the card document.
        r: this stage's result.

    Returns:
        The section's blocks.
    """
    stable = "not measured" if r.get("stability") is None else format_percent(r["stability"])
    exact = (f"exact (logit = concepts + residual + bias, closure error {r['closure_error']:.1e})"
             if r["importance"] == "exact" else "gradient × activation estimate")
    out: list[Block] = [Paragraph(
        f"{r['k']} {r['method'].upper()} concepts in {r['layer']} over {r['images']} images: held-out R² "
        f"{format_value(r['r2'], 3)}, {format_value(r['l0'], 2)} active codes per cell, {r['dead']} dead; "
        f"{stable} of the concepts found again (cosine ≥ 0.8) with other seeds. Importance: {exact}.")]
    rows = [[c["concept"], f"{c['name']['name']} (IoU {c['name']['iou']:.2f})" if c["name"] else "",
             f"{c['purest']['class']} ({format_percent(c['purest']['share'])})" if c["purest"] else "",
             format_value(c["importance"], 3), "" if c["matched_cosine"] is None else format_value(c["matched_cosine"], 2)]
            for c in r["concepts"]]
    out.append(Table(["concept", "name (mask IoU)", "purest class", "mean logit contribution", "matched cosine"],
                     rows, sortable=True))
    if r["classes"]:
        out.append(Table(["predicted class", "images", "top concepts", "share of logit − bias"],
                         [[c["name"], c["images"], ", ".join(map(str, c["top_concepts"])), format_percent(c["top_share"])]
                          for c in r["classes"]]))
    if r.get("naming"):
        n = r["naming"]
        out.append(Paragraph(f"Labelled concepts recovered at IoU ≥ {n['iou_threshold']}: {len(n['recovered'])} of "
                             f"{n['labelled_concepts']} ({', '.join(n['recovered']) or 'none'}); by as many random "
                             f"directions, per draw: {', '.join(map(str, n['random_recovered']))}."))
    return out


STAGE = Stage("concepts", "Concepts discovered from the activations", run, blocks=blocks,
              params=lambda c: {"k": c.concept_k, "method": c.concept_method, "seed": c.seed}, needs=("probe",),
              enabled=lambda c: c.concept_k > 0)
