"""Elite BackProp (Kasioumis et al. 2021): class-wise activation sparsity.

A_ij = spatial mean of |F_ij| at the chosen layer (Eq. 1), whose output F must be post-activation
as in the paper ("followed by ReLU and maxpooling"): the default ``last_stage`` is the last block
before global pooling (``layer4`` of a ResNet). A convolution followed by a normalisation is
refused: its output scale is undone downstream, so shrinking its weights would remove the
penalty without changing the model. Per class c the accumulator
D^c += A_i for every training image of class c (Eq. 2, float64, summed over all ranks). The
top-K filters of D^c are the elite E_c. Penalty R = mean_i Σ_j (1 − p_{j,c_i}) A_ij with
1 − p_jc = [j ∉ E_c] · D^c_j / D^c_(K) (Eq. 3–4); loss = CE + λR (Eq. 5). The appendix variant
``variant=all`` penalizes every filter with 1 − p_jc = D^c_j / D^c_(1); ``ridge`` adds the
appendix's ridge penalty ‖W‖² on the layer after the regularized one.

Example::

    inspectnet finetune model/ mnist5k:train --plugin ebp:K=25,lam=1e-3,layer=layer4 --epochs 2 --out ft/
"""

from typing import Any

import torch
from torch import nn

from inspectnet.core.errors import InspectnetError
from inspectnet.plugins import HParam, Plugin, all_reduce_sum
from inspectnet.training.hoyer_log import HoyerLog


class EliteBackProp(Plugin):
    name = "ebp"
    paper = "Kasioumis et al., Elite BackProp: Training Sparse Interpretable Neurons (NeSy 2021)"
    summary = "penalize filters that fire on a class outside that class's top-K 'elite' filters"
    needs_labels = True
    hparams = (
        HParam("K", "int", 25, "elite filters per class", low=1),
        HParam("lam", "float", 1e-3, "regularization strength λ", low=0.0),
        HParam("layer", "str", "last_stage",
               "post-activation layer whose filters are regularized (paper: VGG16 conv13 + ReLU + max-pool)"),
        HParam("variant", "str", "elite", "elite: elites unpenalized (Eq. 4); all: appendix variant",
               choices=("elite", "all")),
        HParam("ridge", "float", 0.0, "ridge ‖W‖² strength on the layer after `layer` (appendix)", low=0.0),
    )

    def setup(self, model: nn.Module) -> None:
        self.layer_name = self.activation_layer(self.hp["layer"], penalty=True)
        self.D: torch.Tensor | None = None  # (classes, filters) float64, created at the first batch
        self._act: torch.Tensor | None = None
        self.hoyer_log = HoyerLog()
        self.ridge_params = self._next_layer_weights(model) if self.hp["ridge"] > 0 else []
        self.hook(self.layer_name, self._capture)

    def _capture(self, out: torch.Tensor) -> None:
        # clone first: a following in-place ReLU would otherwise alter what |·| saved for backward
        a = out.clone().float().abs()
        self._act = a.mean(dim=tuple(range(2, a.dim()))) if a.dim() > 2 else a

    def _next_layer_weights(self, model: nn.Module) -> list[nn.Parameter]:
        names = [n for n, _ in model.named_modules()]
        after = [n for n in names[names.index(self.layer_name) + 1:]
                 if not n.startswith(self.layer_name + ".")]
        for n in after:
            w = getattr(model.get_submodule(n), "weight", None)
            if isinstance(w, nn.Parameter) and w.dim() >= 2:
                return [w]
        raise InspectnetError(f"plugin ebp: no layer with weights follows {self.layer_name!r} for ridge")

    def loss(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._act is None:
            raise InspectnetError(f"plugin ebp: layer {self.layer_name!r} did not run in the forward pass")
        a, self._act = self._act, None
        if (y < 0).any():
            raise InspectnetError("plugin ebp needs labels; the batch holds unlabelled samples")
        self._accumulate(a.detach(), y)
        weights = self.penalty_weights().to(a.device, torch.float32)
        reg = (weights[y] * a).sum(1).mean()
        self.hoyer_log.add(a)
        terms = {"ebp": self.hp["lam"] * reg}
        if self.ridge_params:
            terms["ebp_ridge"] = self.hp["ridge"] * sum(p.float().pow(2).sum() for p in self.ridge_params)
        return terms

    def _accumulate(self, a: torch.Tensor, y: torch.Tensor) -> None:
        if self.D is None:
            if self.hp["K"] > a.shape[1]:
                raise InspectnetError(f"plugin ebp: K={self.hp['K']} is larger than the {a.shape[1]} filters "
                                      f"of layer {self.layer_name!r}")
            self.D = torch.zeros(self.num_classes, a.shape[1], dtype=torch.float64, device=a.device)
        batch = torch.zeros_like(self.D).index_add_(0, y, a.double())
        self.D += all_reduce_sum(batch)

    def penalty_weights(self) -> torch.Tensor:
        """(classes, filters) matrix of 1 − p_jc from the current accumulators (Eq. 4)."""
        D = self.D
        if self.hp["variant"] == "all":
            top = D.max(dim=1, keepdim=True).values
            return torch.where(top > 0, D / top.clamp_min(1e-300), torch.zeros_like(D))
        vals, idx = D.topk(self.hp["K"], dim=1)
        kth = vals[:, -1:]
        # non-elite filters have D_j <= D_(K); a class whose K-th value is 0 has no evidence yet
        w = torch.where(kth > 0, D / kth.clamp_min(1e-300), torch.zeros_like(D))
        return w.scatter(1, idx, 0.0)

    def elites(self) -> list[list[int]]:
        """Elite filter indices per class (empty lists before any batch)."""
        if self.D is None:
            return [[] for _ in range(self.num_classes)]
        return self.D.topk(self.hp["K"], dim=1).indices.tolist()

    def epoch_end(self, epoch: int) -> dict[str, float]:
        out = self.hoyer_log.pop()
        if self.D is not None:
            out["distinct_elites"] = float(len({j for row in self.elites() for j in row}))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {} if self.D is None else {"D": self.D.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "D" in state:
            self.D = state["D"].to(torch.float64)
            if self.model is not None:
                self.D = self.D.to(next(self.model.parameters()).device)
