"""Duty Cycle k-winners with boosting (Ahmad & Scheinkman 2019, "How can we be so dense?"), an EBP baseline.

Inserted after ``layer``: per sample, the k = ⌈density·C⌉ channels (units for 2-D outputs) with the
largest *boosted* activation win, where the boost of unit i is b_i = exp(β(density − d_i)) and
d_i is its duty cycle, a running average (period T) of how often it won. Winners keep their
unboosted value, the rest become 0. Duty cycles update in training only (summed over ranks) and
are checkpointed; boosting also applies at evaluation, as in the reference implementation.
For conv maps a channel's activation is its spatial mean when ranking and its whole map is kept.

Example::

    inspectnet finetune model/ mnist5k:train --plugin dutycycle:density=0.5,boost=1.0,layer=layer4 --out ft/
"""

import math
from typing import Any

import torch
from torch import nn

from inspectnet.plugins import HoyerLog, HParam, Plugin, all_reduce_sum


class DutyCycle(Plugin):
    name = "dutycycle"
    paper = "Ahmad & Scheinkman: How Can We Be So Dense? The Benefits of Using Highly Sparse Representations (2019)"
    summary = "k-winners activation with boosting of rarely active units (duty cycles)"
    alters_forward = True
    hparams = (
        HParam("density", "float", 0.5, "fraction â of units active per sample", low=1e-6, high=1.0),
        HParam("boost", "float", 1.0, "boost strength β", low=0.0),
        HParam("period", "int", 1000, "duty-cycle period T (samples)", low=1),
        HParam("layer", "str", "last_stage", "layer after which the activation is inserted"),
    )

    def setup(self, model: nn.Module) -> None:
        self.layer_name = self.activation_layer(self.hp["layer"], penalty=False)
        self.duty: torch.Tensor | None = None
        self.seen = 0
        self.hoyer_log = HoyerLog()
        self.hook(self.layer_name, self._apply)

    def _apply(self, out: torch.Tensor) -> torch.Tensor:
        units = out.mean(dim=tuple(range(2, out.dim()))) if out.dim() > 2 else out
        if self.duty is None:
            self.duty = torch.zeros(units.shape[1], dtype=torch.float64, device=out.device)
        k = max(1, math.ceil(self.hp["density"] * units.shape[1]))
        boost = torch.exp(self.hp["boost"] * (self.hp["density"] - self.duty)).to(units.dtype)
        winners = (units.detach() * boost).topk(k, dim=1).indices
        mask = torch.zeros_like(units, dtype=torch.bool).scatter_(1, winners, True)
        y = out * mask.view(*mask.shape, *([1] * (out.dim() - 2))).to(out.dtype)
        if self.model is not None and self.model.training:
            self._update_duty(mask)
            self.hoyer_log.add(y)
        return y

    def _update_duty(self, mask: torch.Tensor) -> None:
        counts = all_reduce_sum(torch.cat([mask.double().sum(0), mask.new_tensor([mask.shape[0]], dtype=torch.float64)]))
        wins, n = counts[:-1], float(counts[-1])
        T = self.hp["period"]
        self.seen += int(n)
        period = min(self.seen, T)
        self.duty = (self.duty * (period - n) + wins) / period

    def epoch_end(self, epoch: int) -> dict[str, float]:
        logged = self.hoyer_log.pop()
        return {**logged, "min_duty": float(self.duty.min())} if logged else {}

    def state_dict(self) -> dict[str, Any]:
        return {} if self.duty is None else {"duty": self.duty.cpu(), "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "duty" in state:
            self.duty, self.seen = state["duty"].to(torch.float64), int(state["seen"])
