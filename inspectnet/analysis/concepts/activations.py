"""The model with a second output, its concept activations (B, K, H, W), in a form ONNX exporters take.

The wrapper :class:`ConceptActivations` wraps a timm-style model (``forward_features`` / ``forward_head``) whose
``forward_features`` output is the map the concepts were discovered in (the layer the head pools,
``last_stage``): ``forward(x) -> (logits, concepts)``. The codes are computed with tensor operations
only:

* TopK autoencoder: U = TopK_k(ReLU(W_e(a/s − b_d) + b_e)) per cell, as in training, exactly;
* NMF: U minimises ‖A − U·V‖ with U ≥ 0 by ``iterations`` multiplicative updates
  U ← U ⊙ (A·Vᵀ)/(U·V·Vᵀ) from the constant start √(mean(A)/K) (scikit-learn's solver, run for a fixed
  number of steps per image instead of to its tolerance over a batch), unrolled into the graph.

An exporter (``inspectnet export --concepts DIR``) loads the concept basis and factoriser, builds
``ConceptActivations(zm.model, result.factoriser)`` and exports it like ``ClassEvidence``: input
``input``, outputs ``logits`` and ``concepts``, and checks the second output against this module in
ONNX Runtime as it checks the logits.

>>> from inspectnet.analysis.concepts.factor import make_factoriser
>>> from inspectnet.models.zoo import load_model
>>> zm = load_model("resnet18", num_classes=2, input_size=32)
>>> sae = make_factoriser("sae", 512, 4, 0, active=2); sae.partial_fit(torch.rand(64, 512))
>>> logits, concepts = ConceptActivations(zm.model, sae).eval()(torch.rand(1, 3, 32, 32))
>>> concepts.shape
torch.Size([1, 4, 1, 1])
"""

import torch
from torch import nn

from inspectnet.analysis.concepts.factor import StreamingNMF, TopKAutoencoder, multiplicative_codes
from inspectnet.core.errors import InspectnetError

NMF_ITERATIONS = 200   # scikit-learn's default cap for the same updates
OUTPUT_NAMES = ("logits", "concepts")


class ConceptActivations(nn.Module):
    """``forward(x) -> (logits (B, classes), concepts (B, K, H, W))`` for a fitted factoriser.

    Args:
        model: a model with ``forward_features`` and ``forward_head`` (timm); its features are the map
            the factoriser was fitted on.
        factoriser: a fitted :class:`StreamingNMF` or :class:`TopKAutoencoder`, or what
            :func:`~inspectnet.analysis.concepts.saved.read_factoriser` reads back from ``basis.npz``.
        iterations: multiplicative updates of the NMF codes.

    Raises:
        InspectnetError: ``model`` has no ``forward_features`` / ``forward_head`` split.

    Examples:
        >>> from inspectnet.analysis.concepts.factor import make_factoriser
        >>> from inspectnet.models.zoo import load_model
        >>> zm = load_model("resnet18", num_classes=2, input_size=32)
        >>> nmf = make_factoriser("nmf", 512, 3, 0); nmf.partial_fit(torch.rand(64, 512))
        >>> ConceptActivations(zm.model, nmf, iterations=5).codes(torch.rand(2, 512, 2, 2)).shape
        torch.Size([2, 3, 2, 2])
    """

    output_names = OUTPUT_NAMES   # the exporter names the graph's outputs after these

    def __init__(self, model: nn.Module, factoriser: StreamingNMF | TopKAutoencoder, iterations: int = NMF_ITERATIONS):
        super().__init__()
        if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
            raise InspectnetError(f"{type(model).__name__} has no forward_features/forward_head split; concept outputs "
                                  f"are built on the map the head pools")
        self.model, self.iterations = model, int(iterations)
        self.method = factoriser.method
        self.register_buffer("basis", factoriser.basis.float().clone())
        if factoriser.method == "sae":
            self.active = factoriser.active
            self.register_buffer("encoder", factoriser.encoder.detach().float().clone())
            self.register_buffer("enc_bias", factoriser.enc_bias.detach().float().clone())
            self.register_buffer("dec_bias", factoriser.dec_bias.detach().float().clone())
            self.register_buffer("scale", factoriser.scale.detach().float().clone())

    def codes(self, maps: torch.Tensor) -> torch.Tensor:
        """Concept codes of feature maps, computed with tensor operations only.

        Args:
            maps: (B, C, H, W) feature maps of the layer the factoriser was fitted on.

        Returns:
            The (B, K, H, W) non-negative concept codes.
        """
        b, c, h, w = maps.shape
        cells = maps.flatten(2).transpose(1, 2)                                  # (B, HW, C)
        u = self._sae(cells) if self.method == "sae" else self._nmf(cells)
        return u.transpose(1, 2).reshape(b, -1, h, w)

    def _sae(self, cells: torch.Tensor) -> torch.Tensor:
        pre = torch.relu((cells / self.scale - self.dec_bias) @ self.encoder.T + self.enc_bias)
        top = pre.topk(self.active, dim=2)
        return torch.zeros_like(pre).scatter(2, top.indices, top.values)

    def _nmf(self, cells: torch.Tensor) -> torch.Tensor:
        start = torch.sqrt(cells.mean((1, 2), keepdim=True) / self.basis.shape[0])   # (B, 1, 1): per image
        return multiplicative_codes(cells, self.basis, start, self.iterations)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's logits and the concept codes of the map its head pools.

        Args:
            x: (B, 3, H, W) input images.

        Returns:
            ``(logits (B, classes), concepts (B, K, h, w))``.
        """
        features = self.model.forward_features(x)
        return self.model.forward_head(features), self.codes(features)
