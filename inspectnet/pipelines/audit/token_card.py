"""The explanations stage's card section on a token transformer's exact evidence.

It shows the remainder's share per image and the layers and attention heads ranked by their direct contribution.
"""

from __future__ import annotations

from typing import Any

from inspectnet.core.tables import format_percent, format_value
from inspectnet.reports.blocks import Block, Paragraph, Table


def token_evidence_blocks(found: dict[str, dict[str, Any]] | None) -> list[Block]:
    """Card blocks for ``card["explanations"]["token_evidence"]`` (one entry per model form); none without it.

    Args:
        found: {form name: :func:`~inspectnet.analysis.explain.token_summary.token_evidence_summary`}.

    Returns:
        A paragraph, a table of remainder shares per form, and the component ranking of the first form.

    Example:
        >>> token_evidence_blocks(None)
        []
    """
    if not found:
        return []
    blocks: list[Block] = [Paragraph(
        "Evidence of a token transformer: each logit is the sum of the patch tokens' direct effects (the map: "
        "attention values moved from each patch, and its MLP and embedding terms where the head reads it, through "
        "every LayerNorm with its scale taken for the image; Gandelsman et al. 2024), a non-spatial remainder (class, "
        "distillation and register tokens, projection biases, LayerNorm shifts) and the head's bias. The "
        "remainder's share is |r| / (Σ|E| + |r|) for the class each map explains: the part of the evidence no "
        "patch carries.")]
    blocks.append(Table(["model form", "images", "remainder share per image", "mean", "max"],
                        [[form, s["images"], ", ".join(format_percent(v) if v is not None else "—"
                                                       for v in s["remainder_share"]["per_image"]),
                          format_percent(s["remainder_share"]["mean"]), format_percent(s["remainder_share"]["max"])]
                         for form, s in found.items()]))
    form, first = next(iter(found.items()))
    blocks.append(Paragraph(f"Direct contribution to each image's class ({form}), mean over the images, largest "
                            f"|contribution| first: every layer (its heads' sum and its MLP), and the top heads."))
    blocks.append(Table(["layer", "attention", "MLP", "total"],
                        [[x["layer"], format_value(x["attention"], 3), format_value(x["mlp"], 3),
                          format_value(x["total"], 3)] for x in first["layers"]]))
    blocks.append(Table(["layer", "head", "contribution"],
                        [[x["layer"], x["head"], format_value(x["contribution"], 3)] for x in first["heads"]]))
    return blocks
