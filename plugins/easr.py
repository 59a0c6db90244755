"""Expected-activation sparsity regularizer (Lee, Ekanadham, Ng 2007, "Sparse deep belief net
model for visual area V2"), an EBP baseline.

Penalty λ Σ_j (p − E_batch[A_ij])² on the chosen layer, A_ij = spatial mean of |F_ij| (the
same per-filter activation EBP uses): every filter's expected activation over the minibatch is
pulled towards the low target level p. Statistics are per process (not all-reduced) under DDP.

Example::

    inspectnet finetune model/ mnist5k:train --plugin easr:lam=1e-4,p=0.05,layer=layer4 --out ft/
"""

import torch
from torch import nn

from inspectnet.plugins import HParam, Plugin
from inspectnet.training.hoyer_log import HoyerLog


class ExpectedActivationSparsity(Plugin):
    name = "easr"
    paper = "Lee, Ekanadham, Ng: Sparse deep belief net model for visual area V2 (NIPS 2007)"
    summary = "penalize the deviation of each filter's expected activation from a low target p"
    hparams = (
        HParam("lam", "float", 1e-4, "regularization strength λ", low=0.0),
        HParam("p", "float", 0.05, "target expected activation", low=0.0),
        HParam("layer", "str", "last_stage", "layer whose filters are regularized"),
    )

    def setup(self, model: nn.Module) -> None:
        self.layer_name = self.activation_layer(self.hp["layer"], penalty=True)
        self._act: torch.Tensor | None = None
        self.hoyer_log = HoyerLog()
        self.hook(self.layer_name, self._capture)

    def _capture(self, out: torch.Tensor) -> None:
        a = self.unit_maps(self.layer_name, out).clone().float().abs()  # tokens: patch positions only
        self._act = a.mean(dim=tuple(range(2, a.dim()))) if a.dim() > 2 else a

    def loss(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        a, self._act = self._act, None
        self.hoyer_log.add(a)
        return {"easr": self.hp["lam"] * (self.hp["p"] - a.mean(0)).pow(2).sum()}

    def epoch_end(self, epoch: int) -> dict[str, float]:
        return self.hoyer_log.pop()
