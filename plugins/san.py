"""Sparse activation of Sparsely Activated Networks (Bizopoulos & Koutsouris), inserted after a layer.

The chosen layer's output maps pass through φ ∈ {identity, max-activations (top-k per map; k = 0:
the paper's ⌊n/m⌋^dim), max-pool-indices (one survivor per m×m window), peaks (the paper's
Algorithm 4: interior local maxima, greedily at distance > d)} during training and evaluation
while the plugin is attached (see :mod:`inspectnet.analysis.san.activations`). A layer whose
output has no spatial map to select in (a vector per sample, a 1×1 map, or a map too small to
have an interior point for peaks) is refused at the first forward pass, naming the shape.

Example::

    inspectnet finetune model/ mnist5k:train --plugin san:activation=peaks,d=2,layer=layer3 --out ft/
"""

import math

import torch
from torch import nn

from inspectnet.analysis.san.activations import ACTIVATIONS, get_activation
from inspectnet.core.errors import InspectnetError
from inspectnet.plugins import HParam, Plugin
from inspectnet.training.hoyer_log import HoyerLog


class SparseActivation(Plugin):
    name = "san"
    paper = "Bizopoulos & Koutsouris, Sparsely Activated Networks (IEEE TNNLS 2021)"
    summary = "sparse activation (identity, max-activations, max-pool-indices, peaks) after a layer"
    alters_forward = True
    hparams = (
        HParam("activation", "str", "peaks", "sparse activation φ", choices=ACTIVATIONS),
        HParam("layer", "str", "last_stage", "layer whose output maps φ sparsifies"),
        HParam("k", "int", 0, "max-activations: survivors per map (0: the paper's ⌊n/m⌋^dim)", low=0),
        HParam("m", "int", 2, "max-pool-indices: window size", low=1),
        HParam("d", "int", 2, "peaks: minimum peak distance mpd (kept peaks are > d apart)", low=1),
    )

    def setup(self, model: nn.Module) -> None:
        self.layer_name = self.activation_layer(self.hp["layer"], penalty=False)
        self.phi = get_activation(self.hp["activation"], k=self.hp["k"], m=self.hp["m"], d=self.hp["d"])
        self.hoyer_log = HoyerLog()
        self._density: list[float] = []
        self.hook(self.layer_name, self._apply)

    def _apply(self, out: torch.Tensor) -> torch.Tensor:
        self._check_maps(out)
        y = self.phi(out)
        if self.model is not None and self.model.training:
            self._density.append(float((y.detach() != 0).float().mean()))
            self.hoyer_log.add(y)
        return y

    def _check_maps(self, out: torch.Tensor) -> None:
        sides = tuple(out.shape[2:])
        peaks = self.hp["activation"] == "peaks"
        # peaks needs an interior point on every axis; the others need more than one position
        usable = len(sides) in (1, 2) and (min(sides) >= 3 if peaks else math.prod(sides) >= 2)
        if not usable:
            need = "sides of at least 3" if peaks else "more than one position"
            raise InspectnetError(f"plugin san: layer {self.layer_name!r} gives outputs of shape {tuple(out.shape)}; "
                                  f"{self.hp['activation']} selects positions within a map, so it needs (B, C, L) "
                                  f"or (B, C, H, W) maps with {need}; name an earlier layer")

    def epoch_end(self, epoch: int) -> dict[str, float]:
        if not self._density:
            return {}
        out = {**self.hoyer_log.pop(), "density": sum(self._density) / len(self._density)}
        self._density = []
        return out
