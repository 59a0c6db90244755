"""Sparse activation of Sparsely Activated Networks (Bizopoulos & Koutsouris), inserted after a layer.

The chosen layer's output maps pass through φ ∈ {identity, max-activations (top-k per map),
max-pool-indices (one survivor per m×m window), peaks (greedy local maxima at distance ≥ d)}
during training and evaluation while the plugin is attached (see
:mod:`inspectnet.analysis.san.activations`).

Example::

    inspectnet finetune model/ mnist5k:train --plugin san:activation=peaks,d=2,layer=layer3 --out ft/
"""

import torch
from torch import nn

from inspectnet.analysis.san.activations import ACTIVATIONS, get_activation
from inspectnet.plugins import HoyerLog, HParam, Plugin


class SparseActivation(Plugin):
    name = "san"
    paper = "Bizopoulos & Koutsouris, Sparsely Activated Networks (IEEE TNNLS 2021)"
    summary = "sparse activation (identity, max-activations, max-pool-indices, peaks) after a layer"
    alters_forward = True
    hparams = (
        HParam("activation", "str", "peaks", "sparse activation φ", choices=ACTIVATIONS),
        HParam("layer", "str", "last_conv", "layer whose output maps φ sparsifies"),
        HParam("k", "int", 1, "max-activations: survivors per map", low=1),
        HParam("m", "int", 2, "max-pool-indices: window size", low=1),
        HParam("d", "int", 2, "peaks: minimum distance between peaks", low=1),
    )

    def setup(self, model: nn.Module) -> None:
        self.layer_name = self.layer(self.hp["layer"])
        self.phi = get_activation(self.hp["activation"], k=self.hp["k"], m=self.hp["m"], d=self.hp["d"])
        self.hoyer_log = HoyerLog()
        self._density: list[float] = []
        self.hook(self.layer_name, self._apply)

    def _apply(self, out: torch.Tensor) -> torch.Tensor:
        y = self.phi(out) if out.dim() in (3, 4) else out
        if self.model is not None and self.model.training:
            self._density.append(float((y.detach() != 0).float().mean()))
            self.hoyer_log.add(y)
        return y

    def epoch_end(self, epoch: int) -> dict[str, float]:
        if not self._density:
            return {}
        out = {**self.hoyer_log.pop(), "density": sum(self._density) / len(self._density)}
        self._density = []
        return out
