"""Modules that saved models are rebuilt with: the decomposed head and a channel gather.

A :class:`DecomposedLinear` is a linear head whose class c reads only the features in its support
S_c ("Decomposing the Deep"): logit_c = Σ_{j∈S_c} W[c, j]·f_j + b_c. It computes this as a masked linear
layer, keeps the decomposition as metadata (per-class indices, weights, bias), and can present
itself as a dense zero-filled Linear over the gathered union of used features (the form that
exports best). How the supports are chosen is the analysis's business
(:mod:`inspectnet.analysis.heads.decompose`); this module only holds the layers.

>>> head = nn.Linear(4, 2)
>>> dec = DecomposedLinear.from_linear(head, torch.ones(2, 4, dtype=torch.bool))
>>> x = torch.randn(3, 4); bool(torch.equal(dec(x), head(x)))
True
"""

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from inspectnet.core.errors import InspectnetError


class DecomposedLinear(nn.Linear):
    """A linear head whose class c only sees the features where ``mask[c]`` is True.

    Weights off the support are stored as exact zeros and re-masked in ``forward`` (so training
    cannot move them). ``feature_ids`` names the original feature index of each input column
    (``arange`` unless the features were slimmed to the union).

    Args:
        in_features: input features.
        out_features: classes.
        bias: whether the head has a bias.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", torch.ones(out_features, in_features, dtype=torch.bool))
        self.register_buffer("feature_ids", torch.arange(in_features, dtype=torch.int64))

    @classmethod
    def from_linear(cls, head: nn.Module, mask: torch.Tensor) -> "DecomposedLinear":
        """Build from a dense head and a (classes × features) boolean support mask.

        Args:
            head: the dense ``nn.Linear`` head.
            mask: the (classes × features) support; True where a class uses a feature.

        Returns:
            The decomposed head on the dense head's device, its weights the dense ones on the support.

        Raises:
            InspectnetError: the head is not a linear layer, or the mask's shape is not the head's.

        Examples:
            >>> dec = DecomposedLinear.from_linear(nn.Linear(3, 2), torch.tensor([[1, 0, 0], [0, 1, 1]]).bool())
            >>> dec.supports()
            [[0], [1, 2]]
        """
        if not isinstance(head, nn.Linear):
            raise InspectnetError(f"the head {type(head).__name__} is not a linear layer; a decomposed head needs "
                                  f"logits = W f + b")
        if tuple(mask.shape) != (head.out_features, head.in_features):
            raise InspectnetError(f"the support mask is {tuple(mask.shape)} but the head is {head.out_features} "
                                  f"classes x {head.in_features} features")
        dec = cls(head.in_features, head.out_features, bias=head.bias is not None)
        mask = mask.to(head.weight.device, torch.bool)
        with torch.no_grad():
            dec.weight.copy_(head.weight * mask)
            if head.bias is not None:
                dec.bias.copy_(head.bias)
            dec.mask.copy_(mask)
        return dec.to(head.weight.device)

    def effective_weight(self) -> torch.Tensor:
        """The weights the head computes with: zero off the support.

        Returns:
            The (classes × features) masked weight.
        """
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of ``x`` through the masked weights.

        Args:
            x: (B, features) inputs.

        Returns:
            (B, classes) logits.
        """
        return F.linear(x, self.effective_weight(), self.bias)

    def supports(self) -> list[list[int]]:
        """Per class, the original feature indices it uses.

        Returns:
            One ascending list of feature indices per class.
        """
        ids = self.feature_ids.tolist()
        return [[ids[j] for j in torch.nonzero(row).flatten().tolist()] for row in self.mask]

    def decomposition(self) -> dict[str, Any]:
        """The decomposition as metadata: per-class indices and weights, and the bias.

        A class whose row uses every feature (a class without fitting data keeps its dense row) is
        listed in ``dense_classes`` with ``None`` for its indices and weights: they are the head's own
        row, and repeating 995 dense rows of an ImageNet head would make the metadata megabytes.

        Returns:
            ``{"indices", "weights", "bias", "dense_classes", ...}``, JSON-ready.
        """
        w = self.effective_weight().detach().cpu()
        mask = self.mask.cpu()
        dense = mask.all(dim=1).tolist()
        idx = [None if full else torch.nonzero(row).flatten().tolist() for row, full in zip(mask, dense)]
        ids = self.feature_ids.tolist()
        return {"indices": [None if s is None else [ids[j] for j in s] for s in idx],
                "weights": [None if s is None else w[c, s].tolist() for c, s in enumerate(idx)],
                "dense_classes": [c for c, full in enumerate(dense) if full],
                "bias": self.bias.detach().cpu().tolist() if self.bias is not None else None}

    def union(self) -> list[int]:
        """Input columns (positions) that some class uses.

        Returns:
            The column positions, ascending.

        Examples:
            >>> DecomposedLinear.from_linear(nn.Linear(3, 2), torch.tensor([[1, 0, 0], [1, 0, 1]]).bool()).union()
            [0, 2]
        """
        return torch.nonzero(self.mask.any(dim=0)).flatten().tolist()

    def macs(self) -> int:
        """Multiply-accumulates per sample: one per supported (class, feature) pair.

        Returns:
            The count.

        Examples:
            >>> DecomposedLinear.from_linear(nn.Linear(3, 2), torch.tensor([[1, 0, 0], [1, 0, 1]]).bool()).macs()
            3
        """
        return int(self.mask.sum())

    def to_gathered(self) -> nn.Module:
        """Dense zero-filled Linear over the gathered union of used features (export-friendly form).

        Returns:
            ``nn.Sequential(ChannelGather(union), nn.Linear)`` computing the same logits.
        """
        keep = torch.tensor(self.union(), dtype=torch.int64, device=self.weight.device)
        lin = nn.Linear(len(keep), self.out_features, bias=self.bias is not None).to(self.weight.device)
        with torch.no_grad():
            lin.weight.copy_(self.effective_weight()[:, keep])
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return nn.Sequential(ChannelGather(keep), lin)


class ChannelGather(nn.Module):
    """Select channels (dim 1) by index: (B, d, ...) -> (B, len(index), ...).

    Args:
        index: the channels to keep, in order.

    Examples:
        >>> ChannelGather([2, 0])(torch.tensor([[10.0, 11.0, 12.0]])).tolist()
        [[12.0, 10.0]]
    """

    def __init__(self, index: torch.Tensor | list[int]):
        super().__init__()
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The kept channels of ``x``.

        Args:
            x: (B, d, ...) input.

        Returns:
            (B, len(index), ...) output.
        """
        return x.index_select(1, self.index)
