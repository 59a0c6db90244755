"""The trust stage: whether the full model's explanations beat a random control, measured in every audit.

Cheap by design (:mod:`~inspectnet.analysis.explain.trust`): both maps from one forward and one
batched backward, deletion and insertion curves of few steps batched across images and methods.
The explanations stage (``--explain-images``) measures every model form, ROAD, Integrated Gradients
and the sanity cascade at many times the cost.
"""

from __future__ import annotations

from typing import Any, TypedDict

import torch

from inspectnet.core.tables import format_value
from inspectnet.data.subsets import spread_indices
from inspectnet.pipelines.audit.context import AuditContext
from inspectnet.pipelines.audit.explanations import ARROWS, _plus_minus, _versus
from inspectnet.pipelines.audit.stage import Stage
from inspectnet.reports.blocks import Block, BulletList, Paragraph, Table

METHOD_NAMES = {"evidence": "class evidence", "gradcam": "Grad-CAM", "random": "random control"}


class TrustResult(TypedDict, total=False):
    """The trust stage's result in card.json (:func:`~inspectnet.analysis.explain.trust.trust_measurement`)."""

    images: int
    data: str
    steps: int
    reference_steps: int
    baseline: str
    step_error_bound: float
    gradcam_layer: str
    forward_passes: int
    evidence_error: str | None
    methods: dict[str, Any]
    per_image: dict[str, Any]


def run(ctx: AuditContext) -> TrustResult:
    """The full model's class evidence and Grad-CAM against the random control, on evenly spread evaluation images.

    Args:
        ctx: the audit's context (config, model, data).

    Returns:
        The trust measurement, with the data it was made on.
    """
    from inspectnet.analysis.explain.trust import TrustConfig, trust_measurement

    cfg, zm = ctx.config, ctx.zm
    data = ctx.eval_dataset()
    indices = [int(i) for i in spread_indices(len(data), cfg.trust_images)]
    x = torch.stack([data[i][0] for i in indices]).to(next(zm.model.parameters()).device)
    report = trust_measurement(zm, x, indices=indices, config=TrustConfig(
        steps=cfg.trust_steps, baseline=cfg.baseline, batch_size=cfg.batch_size, seed=cfg.seed))
    return {**report, "data": cfg.eval_data or cfg.data}  # type: ignore[typeddict-item]


def blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
    """What was measured, the table against the random control, and what the full measurement adds."""
    out: list[Block] = [Paragraph(
        f"Can the explanations be trusted? {r['images']} evaluation images of {r.get('data') or 'the evaluation data'}, "
        f"each explained for the class the model predicts by its exact class evidence and by Grad-CAM "
        f"({r['gradcam_layer']}). Deletion / insertion: the pixels, most relevant first, are replaced by the "
        f"{r['baseline']} baseline (insertion: restored onto it) in {r['steps']} steps; the area under the curve of "
        f"the class probability is shown. Each method is compared with a random map of the same resolution on the "
        f"same images (paired difference ± standard error); it beats the control when deletion and insertion are "
        f"both better by more than two standard errors. {ARROWS}.")]
    out.append(Table(["method", "map", "deletion AUC ↓", "insertion AUC ↑", "Δ deletion vs random",
                      "Δ insertion vs random", "beats random", "maps ranked"],
                     [[METHOD_NAMES.get(m, m), "x".join(map(str, v["map_size"])),
                       _plus_minus(v["deletion_auc"], v["deletion_auc_se"]),
                       _plus_minus(v["insertion_auc"], v["insertion_auc_se"]), *_versus(v["vs_random"]),
                       f"{v['evaluated']} of {r['images']}"] for m, v in r["methods"].items()]))
    notes = [f"Curves of {r['steps']} steps on the grid of the {r['reference_steps']}-step curve: each AUC is within "
             f"(1 − {r['steps']}/{r['reference_steps']})·V/{r['steps']} of the {r['reference_steps']}-step AUC, V the "
             f"curve's variation ({format_value(r['step_error_bound'], 3)} for a monotone curve). Cost: "
             f"{r['forward_passes']} forward passes and one backward.",
             "Every model form (decomposed, slimmed, int8), Integrated Gradients, ROAD and the sanity cascade: run the "
             "audit with --explain-images N (about 28 forward passes per image, method and form)."]
    if r.get("evidence_error"):
        notes.insert(0, f"No class-evidence map for this head: {r['evidence_error']}")
    out.append(BulletList(notes))
    return out


STAGE = Stage("trust", "Trust in the explanations", run, blocks=blocks,
              params=lambda c: {"n": c.trust_images, "steps": c.trust_steps, "baseline": c.baseline,
                                "seed": c.seed},
              needs=("probe",), writes_folder=False, enabled=lambda c: c.trust_images > 0)
