"""The exact class evidence of any supported head, in one form per model.

Pooled maps for heads that average a last map (CNNs, Swin, EVA), token direct effects for token
transformers (ViT, DeiT-distilled, BEiT, torchvision's ViT).

* ``pooled`` (:mod:`.evidence`): Σ_hw E_c + offset_c = logit_c, the offset a constant of the model;
* ``tokens`` (:mod:`.token_evidence`): Σ_hw E_c + remainder_c + bias_c = logit_c, the remainder an
  input-dependent, non-spatial term (class, distillation and register tokens, projection biases and
  LayerNorm shifts), reported beside the maps.

A model whose token layout is read and checked exact gets the token form; every other model the pooled
form (or the pooled form's refusal). :class:`TokenClassEvidence` is the top-k module that
``inspectnet export --evidence`` puts into the graph for the token form, with the remainder as an output.

>>> from inspectnet.models.zoo import load_model
>>> zm = load_model("resnet18", num_classes=3, input_size=32)
>>> evidence_form(zm)
'pooled'
>>> ev = exact_evidence(zm, torch.randn(2, 3, 32, 32), torch.tensor([[0], [2]]))
>>> bool(torch.allclose(ev.maps.sum((2, 3)) + ev.offset, ev.logits.gather(1, ev.classes), atol=1e-4))
True
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
from torch import nn

from inspectnet.analysis.explain.evidence import (
    ClassChoice,
    ClassEvidence,
    Evidence,
    PooledHead,
    choose_classes,
    class_evidence,
    pooled_head,
)
from inspectnet.analysis.explain.token_evidence import TokenEvidence, token_evidence_supported
from inspectnet.core.errors import InspectnetError
from inspectnet.models.layers import eval_mode

if TYPE_CHECKING:
    from inspectnet.models.zoo import ZooModel

POOLED, TOKENS = "pooled", "tokens"
__all__ = ["POOLED", "TOKENS", "TokenClassEvidence", "evidence_form", "exact_evidence", "pooled_evidence_head",
           "token_class_evidence"]
# how read_layout refuses a model that is no token transformer at all (its reason adds nothing to the pooled one)
_NOT_TOKENS = "not a ViT, DeiT or BEiT token transformer"


def evidence_form(zm: ZooModel) -> str:
    """``"tokens"`` when the model is a token transformer whose decomposition is exact, else ``"pooled"``.

    Args:
        zm: the model.

    Returns:
        :data:`TOKENS` or :data:`POOLED` (whether the pooled form applies is decided by its own reading).

    Examples:
        >>> from inspectnet.models.zoo import load_model
        >>> evidence_form(load_model("resnet18", num_classes=3, input_size=32))
        'pooled'
    """
    return TOKENS if token_evidence_supported(zm) is None else POOLED


def pooled_evidence_head(zm: ZooModel) -> PooledHead:
    """How the model's head pools its last map, refusing with both forms' reasons.

    This is :func:`~.evidence.pooled_head`, whose refusal of a token transformer also names why the token
    form is refused (e.g. CaiT's class-attention layers), so one line says what prevents both.

    Args:
        zm: the model.

    Returns:
        The :class:`~.evidence.PooledHead`.

    Raises:
        InspectnetError: the head does not pool a last map (with the token form's reason where it has one).

    Examples:
        >>> from inspectnet.models.zoo import load_model
        >>> pooled_evidence_head(load_model("resnet18", num_classes=3, input_size=32)).head_name
        'fc'
    """
    try:
        return pooled_head(zm)
    except InspectnetError as exc:
        why = token_evidence_supported(zm)
        if why is None or _NOT_TOKENS in why:
            raise
        raise InspectnetError(f"{exc}; {why}") from None


def exact_evidence(zm: ZooModel, x: torch.Tensor, classes: ClassChoice = "top1") -> Evidence:
    """The exact evidence maps of ``classes`` in the model's :func:`evidence_form`, without gradients.

    For the token form ``offset`` is bias + remainder (B, k), so in both forms
    ``maps.sum((2, 3)) + offset == logits.gather(1, classes)``.

    Args:
        zm: the model.
        x: model inputs (B, C, H, W).
        classes: a (B, k) tensor or a :func:`~.evidence.choose_classes` choice.

    Returns:
        The :class:`~.evidence.Evidence`.

    Raises:
        InspectnetError: the model has neither exact form (see :func:`pooled_evidence_head`).

    Examples:
        >>> from inspectnet.models.zoo import load_model
        >>> zm = load_model("resnet18", num_classes=3, input_size=64)
        >>> exact_evidence(zm, torch.randn(2, 3, 64, 64), "top1").maps.shape
        torch.Size([2, 1, 2, 2])
    """
    if evidence_form(zm) == POOLED:
        return class_evidence(zm, x, classes, pooled=pooled_evidence_head(zm))
    module = TokenClassEvidence(TokenEvidence(zm))
    with eval_mode(zm.model), torch.no_grad():
        return module.evidence(x, classes, zm.class_names)


@dataclasses.dataclass(frozen=True)
class TokenOutputs:
    """The top-k token evidence of a batch.

    Attributes:
        logits: (B, C) the model's logits.
        evidence: (B, k, gh, gw) the maps of ``classes``.
        classes: (B, k) the explained classes.
        remainder: (B, k) the non-spatial part of their logits.
        bias: (B, k) the head bias of each class.
    """

    logits: torch.Tensor
    evidence: torch.Tensor
    classes: torch.Tensor
    remainder: torch.Tensor
    bias: torch.Tensor


class TokenClassEvidence(nn.Module):
    """The top-``k`` token evidence module that ``export --evidence`` puts into the ONNX graph.

    ``forward(x) -> (logits (B, C), evidence (B, k, gh, gw), classes (B, k), remainder (B, k))`` for the
    top-``k`` classes of a token transformer, with
    ``evidence.sum((2, 3)) + remainder + bias[classes] == logits[classes]``.

    Args:
        tokens: the :class:`~.token_evidence.TokenEvidence` of the model (or of its export form).
        k: how many top classes ``forward`` returns.

    Examples:
        >>> import timm
        >>> from inspectnet.models.zoo import ZooModel
        >>> m = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=3).eval()
        >>> zm = ZooModel(model=m, source="timm", arch="vit", num_classes=3, in_chans=3, class_names=list("abc"),
        ...               data_config={"input_size": (3, 32, 32)}, head_name="head")
        >>> tokens = TokenClassEvidence(TokenEvidence(zm), k=2).eval()
        >>> [tuple(t.shape) for t in tokens(torch.randn(1, 3, 32, 32))]
        [(1, 3), (1, 2, 2, 2), (1, 2), (1, 2)]
    """

    def __init__(self, tokens: TokenEvidence, k: int = 1):
        super().__init__()
        self.tokens, self.k = tokens, int(k)
        self.model = tokens.model

    def offset(self) -> torch.Tensor:
        """The constant part of every logit that no token carries.

        Returns:
            The head bias b (C,).
        """
        return self.tokens.bias()

    def outputs(self, x: torch.Tensor, classes: ClassChoice | None = None,
                class_names: list[str] | None = None) -> TokenOutputs:
        """The evidence and remainder of ``classes`` from one decomposition of ``x``.

        Args:
            x: (B, C_in, H, W) input images.
            classes: a (B, k) tensor or a :func:`~.evidence.choose_classes` choice resolved on this pass's
                logits; the top-``k`` when None.
            class_names: the class names a choice by name is resolved against.

        Returns:
            The :class:`TokenOutputs`.
        """
        logits, evidence, remainder = self.tokens(x)
        if classes is None:
            classes = logits.topk(self.k, dim=1).indices
        else:
            classes = choose_classes(classes, logits, class_names)
        rows = torch.arange(x.shape[0], device=x.device)[:, None]
        return TokenOutputs(logits=logits, evidence=evidence[rows, classes], classes=classes,
                            remainder=remainder.gather(1, classes), bias=self.offset()[classes])

    def evidence(self, x: torch.Tensor, classes: ClassChoice | None = None,
                 class_names: list[str] | None = None) -> Evidence:
        """The :class:`~.evidence.Evidence` of ``classes``, whose offset is bias + remainder (B, k).

        Args:
            x: (B, C_in, H, W) input images.
            classes: as in :meth:`outputs` (top-``k`` when None).
            class_names: as in :meth:`outputs`.

        Returns:
            The :class:`~.evidence.Evidence`.
        """
        out = self.outputs(x, classes, class_names)
        return Evidence(maps=out.evidence, classes=out.classes, logits=out.logits, offset=out.bias + out.remainder)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The logits and the top-``k`` classes' evidence, as the exported graph outputs them.

        Args:
            x: (B, C_in, H, W) input images.

        Returns:
            ``(logits (B, C), evidence (B, k, gh, gw), classes (B, k), remainder (B, k))``.
        """
        out = self.outputs(x)
        return out.logits, out.evidence, out.classes, out.remainder


def token_class_evidence(zm: ZooModel, model: nn.Module | None = None, k: int = 1) -> TokenClassEvidence:
    """The :class:`TokenClassEvidence` of ``zm``, refused unless its decomposition is exact.

    It is read from ``model`` (an export form with the same module names, e.g. a gathered head) when given.

    Args:
        zm: the model.
        model: the module to read instead of ``zm.model``.
        k: top classes in the output.

    Returns:
        The module, in eval mode.

    Raises:
        InspectnetError: the token decomposition is not exact for the model (the reason named).

    Examples:
        >>> token_class_evidence(zm, k=2)(x)[1].shape    # doctest: +SKIP
        torch.Size([2, 2, 4, 4])
    """
    reason = token_evidence_supported(zm)
    if reason is not None:
        raise InspectnetError(reason)
    form = dataclasses.replace(zm, model=model) if model is not None else zm
    return TokenClassEvidence(TokenEvidence(form), k).eval()


EVIDENCE_MODULES = (ClassEvidence, TokenClassEvidence)
