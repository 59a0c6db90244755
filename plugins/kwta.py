"""k-Winners-Take-All activation (Xiao et al. 2019), a baseline of the EBP paper.

Inserted after ``layer``: per sample, the ``k`` fraction of largest activations of the whole
layer output survive and the rest become 0. Ties at the threshold all pass (so slightly more
than k·n units may survive); gradients flow through the survivors only.

Example::

    inspectnet finetune model/ mnist5k:train --plugin kwta:k=0.2,layer=layer4 --epochs 2 --out ft/
"""

import math

import torch
from torch import nn

from inspectnet.plugins import HParam, Plugin
from inspectnet.training.hoyer_log import HoyerLog


def kwta(x: torch.Tensor, k: float) -> torch.Tensor:
    """Keep each sample's top ``k`` fraction of entries (ties with the threshold pass).

    >>> kwta(torch.tensor([[3.0, 1.0, 3.0, 2.0]]), 0.25)
    tensor([[3., 0., 3., 0.]])
    """
    flat = x.flatten(1)
    keep = max(1, math.ceil(k * flat.shape[1]))
    threshold = flat.topk(keep, dim=1).values[:, -1:]
    return (flat * (flat >= threshold)).view_as(x)


class KWinnersTakeAll(Plugin):
    name = "kwta"
    paper = "Xiao, Zhong, Zheng: Enhancing Adversarial Defense by k-Winners-Take-All (ICLR 2020)"
    summary = "activation keeping the top-k fraction of a layer's outputs per sample (ties pass)"
    alters_forward = True
    hparams = (
        HParam("k", "float", 0.2, "density: fraction of activations kept", low=1e-6, high=1.0),
        HParam("layer", "str", "last_stage", "layer after which the activation is inserted"),
    )

    def setup(self, model: nn.Module) -> None:
        self.layer_name = self.activation_layer(self.hp["layer"], penalty=False)
        self.hoyer_log = HoyerLog()
        self.hook(self.layer_name, self._apply)

    def _apply(self, out: torch.Tensor) -> torch.Tensor:
        y = kwta(out, self.hp["k"])
        if self.model is not None and self.model.training:
            self.hoyer_log.add(y)
        return y

    def epoch_end(self, epoch: int) -> dict[str, float]:
        return self.hoyer_log.pop()
