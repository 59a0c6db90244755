"""The evidence outputs of ``inspectnet export --evidence``.

Which exact form a model gets, the module that computes them in the graph, and what the file's
metadata says about them.

* pooled heads (CNNs, Swin, EVA): outputs ``logits``, ``evidence`` (B, k, H, W), ``evidence_classes``
  (B, k), with Σ_hw evidence + offset[class] = logit (``offset`` per class in the metadata);
* token transformers (ViT, DeiT-distilled, BEiT, torchvision's ViT): the same three outputs plus
  ``remainder`` (B, k), the input-dependent part of each class's logit that no patch token carries
  (class, distillation and register tokens, projection biases, LayerNorm shifts), with
  Σ_hw evidence + remainder + offset[class] = logit (``offset`` = the head's bias).

>>> from inspectnet import load_model
>>> plan = evidence_plan(load_model("resnet18", input_size=32), 1, head_only=False)
>>> plan.form, plan.outputs()
('pooled', ['logits', 'evidence', 'evidence_classes'])
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from inspectnet.analysis.explain.evidence import PooledHead, evidence_module
from inspectnet.analysis.explain.exact_evidence import (
    POOLED,
    TOKENS,
    evidence_form,
    pooled_evidence_head,
    token_class_evidence,
)
from inspectnet.core.errors import InspectnetError
from inspectnet.runtime.classifier import EVIDENCE, EVIDENCE_CLASSES, LOGITS, REMAINDER

if TYPE_CHECKING:
    from inspectnet.models.zoo import ZooModel

DEFINITIONS = {
    POOLED: "E_c(h,w) = sum_j W[c,j] A_j(h,w) / (H W); sum_hw E_c + offset_c = logit_c",
    TOKENS: "E_c(h,w) = direct effect on logit_c of the patch token at (h,w): the attention values moved from it, "
            "and its MLP and embedding terms where the head reads it, through every LayerNorm with its scale "
            "taken for the input; remainder_c = the same of the class, distillation and register tokens plus "
            "projection biases and LayerNorm shifts; sum_hw E_c + remainder_c + offset_c = logit_c",
}


@dataclasses.dataclass(frozen=True)
class EvidencePlan:
    """What ``--evidence k`` adds.

    The ``form`` (``pooled`` or ``tokens``), ``k`` and, for the pooled form, how the head reads its last map.
    """

    form: str
    k: int
    pooled: PooledHead | None = None

    def outputs(self) -> list[str]:
        """The graph's output names, in the order the evidence module returns them."""
        return [LOGITS, EVIDENCE, EVIDENCE_CLASSES] + ([REMAINDER] if self.form == TOKENS else [])

    def module(self, zm: ZooModel, model: nn.Module) -> nn.Module:
        """The evidence module of ``model`` (``zm.model`` or its export form), in eval mode."""
        if self.form == TOKENS:
            return token_class_evidence(zm, model if model is not zm.model else None, self.k)
        # eval: the TorchScript exporter restores the wrapper's training flag recursively afterwards, which
        # would put a shared (dense) model's BatchNorm into train mode for the gate
        return evidence_module(model, self.pooled, self.k).eval()


def evidence_plan(zm: ZooModel, k: int | None, head_only: bool) -> EvidencePlan | None:
    """The :class:`EvidencePlan` of ``--evidence k`` (None without it); bad requests are refused first.

    Args:
        zm: the model.
        k: the number of top classes, or None.
        head_only: whether only the head is exported (refused with evidence).

    Returns:
        The plan, or None.

    Example:
        >>> evidence_plan(zm, None, False) is None    # doctest: +SKIP
        True
    """
    if k is None:
        return None
    if head_only:
        raise InspectnetError("--evidence needs the whole model: the maps come from the last spatial map, which a "
                              "--head-only export never sees")
    if not 1 <= k <= zm.num_classes:
        raise InspectnetError(f"--evidence {k} asks for the maps of the top-{k} classes, but {zm.spec} has "
                              f"{zm.num_classes} classes; expected 1 to {zm.num_classes}")
    if evidence_form(zm) == TOKENS:
        return EvidencePlan(TOKENS, k)
    return EvidencePlan(POOLED, k, pooled_evidence_head(zm))


def evidence_metadata(plan: EvidencePlan, module: nn.Module, example: torch.Tensor) -> dict[str, Any]:
    """The ``evidence`` entry of the file's metadata.

    It holds k, the grid, the outputs, the offset per class, the form and its definition.

    Args:
        plan: the plan.
        module: its evidence module.
        example: an input batch.

    Returns:
        The entry (``offset`` is left out of the export report, kept in the file).

    Examples:
        >>> evidence_metadata(plan, module, x)["form"]    # doctest: +SKIP
        'tokens'
    """
    with torch.inference_mode():
        maps = module(example[:1])[1]
        offset = module.offset()
    info = {"k": plan.k, "grid": list(maps.shape[2:]), "outputs": plan.outputs(), "form": plan.form,
            "offset": [float(v) for v in offset.detach()], "definition": DEFINITIONS[plan.form]}
    if plan.form == TOKENS:
        info["remainder"] = (f"output {REMAINDER!r} (B, k): per evidence class, the input-dependent part of its logit "
                             f"that no patch token carries")
    return info
