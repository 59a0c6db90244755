"""Duty Cycle k-winners with boosting and sparse weights (Ahmad & Scheinkman 2019, "How can we be so
dense?"), an EBP baseline.

Inserted after ``layer``, as the paper's k-winners layer: per sample, the k = round(density · n)
units with the largest *boosted* activation win, where n counts every output unit (C·H·W for a
conv map: each channel at each position competes, as in the paper's k-winners for conv layers)
and the boost of a unit of channel i is b_i = exp(β (density − d_i)), d_i being the channel's
duty cycle: a running average over the last ``period`` samples of the fraction of its units that
were active (> 0) after the k-winners. Winners keep their unboosted value, the rest become 0.
Duty cycles update in training only (summed over ranks under DDP) and are checkpointed; boosting
also applies at evaluation, as in the paper's reference implementation.

The paper pairs the k-winners with sparse weights: in the layer that feeds it (the last Conv2d
or Linear defined up to ``layer``) each output unit keeps a fixed random ``weight_density``
fraction of its incoming weights; the others are set to zero when the plugin is attached (they
stay zero after it is detached: the trained model is sparse) and their gradients are masked, so
they stay zero through training (``weight_density=1`` keeps the layer dense).

Example::

    inspectnet finetune model/ mnist5k:train --plugin dutycycle:density=0.7,boost=8,layer=layer4 --out ft/
"""

from typing import Any

import torch
from torch import nn

from inspectnet.core.errors import InspectnetError
from inspectnet.plugins import HParam, Plugin, all_reduce_sum
from inspectnet.training.hoyer_log import HoyerLog


def kwinners(x: torch.Tensor, duty: torch.Tensor, k: int, boost: float, density: float) -> torch.Tensor:
    """Keep each sample's ``k`` units of largest boosted value exp(β(density − duty)) · x (unboosted
    values kept); ``duty`` holds one duty cycle per channel (dimension 1).

    >>> kwinners(torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([1.0, 0.0, 0.0]), 1, 10.0, 0.5).tolist()
    [[0.0, 2.0, 0.0]]
    """
    factors = torch.exp(boost * (density - duty)).to(x.dtype).view(1, -1, *([1] * (x.dim() - 2)))
    boosted = (x.detach() * factors).flatten(1)
    winners = boosted.topk(k, dim=1).indices
    mask = torch.zeros_like(boosted, dtype=torch.bool).scatter_(1, winners, True)
    return x * mask.view_as(x).to(x.dtype)


class DutyCycle(Plugin):
    name = "dutycycle"
    paper = "Ahmad & Scheinkman: How Can We Be So Dense? The Benefits of Using Highly Sparse Representations (2019)"
    summary = "k-winners over all units with duty-cycle boosting, after a layer with sparse weights"
    alters_forward = True
    rewrites_weights = True  # the sparse incoming weights stay sparse after detach
    hparams = (
        HParam("density", "float", 0.5, "fraction â of units active per sample (target duty cycle)", low=1e-6,
               high=1.0),
        HParam("boost", "float", 1.0, "boost strength β", low=0.0),
        HParam("period", "int", 1000, "duty-cycle period T (samples)", low=1),
        HParam("weight_density", "float", 0.5, "fraction of incoming weights kept per unit of the feeding layer",
               low=1e-6, high=1.0),
        HParam("seed", "int", 0, "seed of the sparse-weight mask"),
        HParam("layer", "str", "last_stage", "layer after which the k-winners are inserted"),
    )

    def setup(self, model: nn.Module) -> None:
        self.layer_name = self.activation_layer(self.hp["layer"], penalty=False)
        self.duty: torch.Tensor | None = None
        self.seen = 0
        self.hoyer_log = HoyerLog()
        self.weight_layer: str | None = None
        if self.hp["weight_density"] < 1:
            self.weight_layer = self._feeding_layer(model)
            weight = model.get_submodule(self.weight_layer).weight
            self.weight_mask = self._sparse_mask(weight)
            with torch.no_grad():
                weight.mul_(self.weight_mask.to(weight.dtype))
            # masked gradients keep the zeros with SGD, Adam and AdamW (decay of a zero is zero), and the
            # weights are never written during a forward pass (a saved model is the one that ran)
            self._handles.append(weight.register_hook(lambda g: g * self.weight_mask.to(g.dtype)))
        self.hook(self.layer_name, self._apply)

    def _feeding_layer(self, model: nn.Module) -> str:
        names = [n for n, _ in model.named_modules()]
        upto = names[: names.index(self.layer_name) + 1] + [n for n in names if n.startswith(self.layer_name + ".")]
        weighted = [n for n in upto if isinstance(model.get_submodule(n), (nn.Conv2d, nn.Linear))]
        if not weighted:
            raise InspectnetError(f"plugin dutycycle: no Conv2d or Linear layer feeds {self.layer_name!r} "
                                  f"to carry the sparse weights")
        return max(weighted, key=names.index)

    def _sparse_mask(self, weight: torch.Tensor) -> torch.Tensor:
        """Per output unit, exactly round((1 − weight_density)·fan_in) incoming weights are zeroed (seeded)."""
        out_units, fan_in = weight.shape[0], weight[0].numel()
        zeros = round((1 - self.hp["weight_density"]) * fan_in)
        scores = torch.rand(out_units, fan_in, generator=torch.Generator().manual_seed(self.hp["seed"]))
        mask = torch.ones(out_units, fan_in, dtype=torch.bool)
        if zeros:
            mask.scatter_(1, scores.topk(zeros, dim=1).indices, False)
        return mask.view_as(weight).to(weight.device)

    def _apply(self, out: torch.Tensor) -> torch.Tensor:
        if self.duty is None:
            self.duty = torch.zeros(out.shape[1], dtype=torch.float64, device=out.device)
        units = out[0].numel()
        k = max(1, round(self.hp["density"] * units))
        y = kwinners(out, self.duty, k, self.hp["boost"], self.hp["density"])
        if self.model is not None and self.model.training:
            self._update_duty(y.detach())
            self.hoyer_log.add(y)
        return y

    def _update_duty(self, y: torch.Tensor) -> None:
        # fraction of each channel's units (positions) active in each sample, summed over the batch
        active = (y > 0).flatten(2).double().mean(2).sum(0) if y.dim() > 2 else (y > 0).double().sum(0)
        counts = all_reduce_sum(torch.cat([active, active.new_tensor([y.shape[0]])]))
        wins, n = counts[:-1], float(counts[-1])
        self.seen += int(n)
        period = max(min(self.seen, self.hp["period"]), n)  # a period shorter than a batch averages the batch
        self.duty = (self.duty * (period - n) + wins) / period

    def epoch_end(self, epoch: int) -> dict[str, float]:
        logged = self.hoyer_log.pop()
        return {**logged, "min_duty": float(self.duty.min()), "max_duty": float(self.duty.max())} if logged else {}

    def state_dict(self) -> dict[str, Any]:
        return {} if self.duty is None else {"duty": self.duty.cpu(), "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "duty" in state:
            self.duty, self.seen = state["duty"].to(torch.float64), int(state["seen"])
            if self.model is not None:
                self.duty = self.duty.to(next(self.model.parameters()).device)
