"""Sparseout (Khan, Yong, Stavness 2018), an EBP baseline: dropout generalized to an Lq penalty.

In training, after ``layer``: a' = a + (r/(1−p) − 1)·sign(a)·|a|^{q/2} with r ~ Bernoulli(1−p).
E[a'] = a and the implied regularizer is ∝ ‖a‖_q^q (q = 2 is standard dropout; q < 2 favours
sparse activations). Identity at evaluation. The mask uses the global torch RNG, which the
checkpoint saves, so resumption stays bit-for-bit.

Example::

    inspectnet finetune model/ mnist5k:train --plugin sparseout:p=0.5,q=1.0,layer=layer4 --out ft/
"""

import torch
from torch import nn

from inspectnet.plugins import HParam, Plugin
from inspectnet.training.hoyer_log import HoyerLog


def sparseout(a: torch.Tensor, p: float, q: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """One Sparseout draw (training mode).

    >>> sparseout(torch.tensor([4.0, -1.0]), 0.0, 1.0).tolist()
    [4.0, -1.0]
    """
    keep = torch.bernoulli(torch.full_like(a, 1 - p), generator=generator)
    return a + (keep / (1 - p) - 1) * a.sign() * a.abs().pow(q / 2)


class Sparseout(Plugin):
    name = "sparseout"
    paper = "Khan, Yong, Stavness: Sparseout: Controlling Sparsity in Deep Networks (Canadian AI 2019)"
    summary = "Lq-noise dropout: multiplicative noise on |a|^(q/2), implicitly penalizing ‖a‖_q^q"
    alters_forward = True
    hparams = (
        HParam("p", "float", 0.5, "drop probability", low=0.0, high=0.99),
        HParam("q", "float", 1.0, "norm exponent (2 = dropout)", low=0.1),
        HParam("layer", "str", "last_stage", "layer after which the noise is inserted"),
    )

    def setup(self, model: nn.Module) -> None:
        self.layer_name = self.activation_layer(self.hp["layer"], penalty=False)
        self.hoyer_log = HoyerLog()
        self.hook(self.layer_name, self._apply)

    def _apply(self, out: torch.Tensor) -> torch.Tensor | None:
        if self.model is None or not self.model.training:
            return None
        self.hoyer_log.add(out)
        return sparseout(out, self.hp["p"], self.hp["q"])

    def epoch_end(self, epoch: int) -> dict[str, float]:
        return self.hoyer_log.pop()
