"""What a card says about a token transformer's exact evidence.

The remainder's share of each explained image's class evidence, and the layers and attention heads
ranked by their direct contribution.

>>> summary = token_evidence_summary(zm, x, targets)       # doctest: +SKIP
>>> summary["remainder_share"]["per_image"][:2]            # doctest: +SKIP
[0.21, 0.34]
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from inspectnet.analysis.explain.exact_evidence import TOKENS, evidence_form
from inspectnet.analysis.explain.token_evidence import (
    TokenDecomposition,
    TokenEvidence,
    explain_tokens,
    rank_components,
    remainder_share,
)

if TYPE_CHECKING:
    from inspectnet.models.zoo import ZooModel


def token_evidence_summary(zm: ZooModel, x: torch.Tensor, targets: torch.Tensor, *, batch_size: int = 16,
                           top: int = 5) -> dict[str, Any] | None:
    """The remainder share per image and the component ranking for ``targets``.

    None when the model's exact evidence is not the token form.

    Args:
        zm: the model.
        x: the explained images (B, C, H, W).
        targets: one class per image (B,), the class each map explains.
        batch_size: images decomposed at a time.
        top: heads kept in the ranking (every layer is kept).

    Returns:
        ``{"images", "remainder_share": {"per_image", "mean", "max"}, "layers": [...], "heads": [...]}`` where
        the share is |r_c| / (Σ_hw |E_c| + |r_c|) and the rankings are those of
        :func:`~.token_evidence.rank_components` (mean direct effect on each image's class, largest first).

    Examples:
        >>> from inspectnet.models.zoo import load_model
        >>> zm = load_model("resnet18", num_classes=3, input_size=32)
        >>> token_evidence_summary(zm, torch.randn(1, 3, 32, 32), torch.tensor([0])) is None
        True
    """
    if evidence_form(zm) != TOKENS:
        return None
    module = TokenEvidence(zm)
    device = next(zm.model.parameters()).device
    parts = [explain_tokens(zm, x[s:s + batch_size].to(device), module) for s in range(0, len(x), batch_size)]
    dec = _concat(parts)
    classes = targets.to(dec.logits.device).long()
    share = remainder_share(dec, classes).double().cpu()
    rows = torch.arange(len(classes), device=classes.device)
    # no share where neither the maps nor the remainder carry anything (e.g. a classifier of zero weights)
    empty = ((dec.evidence[rows, classes].abs().sum((1, 2)) + dec.remainder[rows, classes].abs()) == 0).cpu()
    defined = share[~empty]
    ranked = rank_components(dec, classes, top=top)
    return {"images": len(x), "classes": "the class each map explains (the form's prediction)",
            "remainder_share": {"per_image": [None if e else round(float(v), 4) for v, e in zip(share, empty)],
                                "mean": float(defined.mean()) if len(defined) else None,
                                "max": float(defined.max()) if len(defined) else None},
            "layers": ranked["layers"], "heads": ranked["heads"]}


def _concat(parts: list[TokenDecomposition]) -> TokenDecomposition:
    """One decomposition of the whole batch from those of its chunks (the bias is shared)."""
    first = parts[0]
    fields = {f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(first)
              if f.name not in ("bias", "parts")}
    return TokenDecomposition(**fields, bias=first.bias,
                              parts={k: torch.cat([p.parts[k] for p in parts]) for k in first.parts})
