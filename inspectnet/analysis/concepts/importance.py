"""How much each class logit owes each concept: exact where the head pools the layer, estimated elsewhere.

Exact (global average pool + linear head on the layer's map A, (C, H, W)): the class evidence is
E_c(h, w) = Σ_j W[c, j]·A_j(h, w)/(H·W). With A = U·V + centre + R (U the cell codes (K, H, W), V the
concept basis (K, C), R the residual), linearity splits the logit exactly::

    logit_c = Σ_m ū_m·(V_m·W[c])  +  centre·W[c]  +  Σ_hw R(h, w)·W[c]/(H·W)  +  b_c

ū_m the spatial mean of concept m's code. :func:`exact_terms` returns the four parts; they add up to
the logit to float rounding (tested on ResNet-18 and EfficientNet-Lite0).

Elsewhere, gradient × activation: concept m's estimate is Σ_hw ⟨∂logit_c/∂A(h, w), U_m(h, w)·V_m⟩,
exact to first order. Its faithfulness is measured by deleting each concept's component from the
map and re-running the rest of the model (:func:`deletion_check`), against deleting a random
component of the same size.
"""

import numpy as np
import torch
from torch import nn

from inspectnet.analysis.explain.evidence import ClassEvidence
from inspectnet.models.layout import layer_layout


def _grid(v: torch.Tensor) -> torch.Tensor:
    return v[:, :, None, None]


def concept_logits(evidence: ClassEvidence, basis: torch.Tensor, centre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logit each class gets from one unit of each concept's code, and from the centre.

    P[m, c] = V_m·W[c] (K, classes) is the logit of one unit of concept m's code spread over the map, and
    p[c] = centre·W[c] (classes,) that of the centre.

    Args:
        evidence: the head's exact evidence module.
        basis: V (K, C).
        centre: (C,).

    Returns:
        ``(P (K, classes), p (classes,))`` on the CPU.

    Examples:
        >>> from inspectnet.analysis.explain.evidence import pooled_head
        >>> from inspectnet.models.zoo import load_model
        >>> zm = load_model("resnet18", num_classes=3, input_size=32).to("cpu")
        >>> p, p0 = concept_logits(ClassEvidence(zm.model, pooled_head(zm)), torch.rand(2, 512), torch.zeros(512))
        >>> p.shape, p0.abs().max().item()
        (torch.Size([2, 3]), 0.0)
    """
    w = evidence.model.get_submodule(evidence.pooled.head_name)
    dev = next(w.parameters()).device
    classes = evidence.offset().shape[0]
    both = torch.cat([basis, centre[None]]).to(dev, torch.float32)
    with torch.no_grad():
        # a 1×1 map of V_m: its evidence is V_m·W[c] (the head's gather or support included)
        out = evidence.maps_for(_grid(both), torch.arange(classes, device=dev)).flatten(1)
    return out[:-1].cpu(), out[-1].cpu()


def exact_terms(evidence: ClassEvidence, maps: torch.Tensor, codes: torch.Tensor, basis: torch.Tensor,
                centre: torch.Tensor, classes: torch.Tensor, *,
                projections: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The exact split of the logits of ``classes`` into concepts, centre, residual and bias.

    Args:
        evidence: the head's exact evidence module (the layer is the map it pools).
        maps: A (B, C, H, W).
        codes: U (B, K, H, W).
        basis: V (K, C).
        centre: (C,).
        classes: (B, k) class indices.
        projections: :func:`concept_logits` of ``basis`` and ``centre`` when already computed.

    Returns:
        ``{"concepts": (B, K, k), "centre": (B, k), "residual": (B, k), "bias": (B, k)}`` whose sum over the
        concepts plus the other three is the logits of ``classes``.

    Examples:
        >>> from inspectnet.analysis.explain.evidence import pooled_head
        >>> from inspectnet.models.zoo import load_model
        >>> zm = load_model("resnet18", num_classes=3, input_size=32).to("cpu")
        >>> ev = ClassEvidence(zm.model, pooled_head(zm))
        >>> a = torch.rand(1, 512, 1, 1); u = torch.rand(1, 2, 1, 1); v = torch.rand(2, 512)
        >>> t = exact_terms(ev, a, u, v, torch.zeros(512), torch.tensor([[0, 2]]))
        >>> total = t["concepts"].sum(1) + t["centre"] + t["residual"] + t["bias"]
        >>> bool(torch.allclose(total, zm.model.forward_head(a)[:, [0, 2]], atol=1e-5))
        True
    """
    maps, codes, classes = maps.cpu().float(), codes.cpu().float(), classes.cpu()
    p_concepts, p_centre = projections if projections is not None else concept_logits(evidence, basis, centre)
    per_class = p_concepts[:, classes].permute(1, 0, 2)                        # (B, K, k)
    recon = torch.einsum("bkhw,kc->bchw", codes, basis.float()) + _grid(centre[None].float())
    dev = evidence.offset().device
    with torch.no_grad():
        residual = evidence.maps_for((maps - recon).to(dev), classes.to(dev)).sum((2, 3)).cpu()
        bias = evidence.offset().cpu()[classes]
    return {"concepts": codes.mean((2, 3))[:, :, None] * per_class, "centre": p_centre[classes],
            "residual": residual, "bias": bias}


class ExactImportance:
    """Accumulates, per predicted class, the mean exact terms of its logit over the images predicting it.

    Args:
        evidence: the head's exact evidence module (the layer is the map it pools).
        basis: V (K, C).
        centre: (C,).

    Examples:
        >>> from inspectnet.analysis.explain.evidence import pooled_head
        >>> from inspectnet.models.zoo import load_model
        >>> zm = load_model("resnet18", num_classes=3, input_size=32).to("cpu")
        >>> imp = ExactImportance(ClassEvidence(zm.model, pooled_head(zm)), torch.rand(2, 512), torch.zeros(512))
        >>> a = torch.rand(4, 512, 1, 1)
        >>> imp.add(a, torch.rand(4, 2, 1, 1), zm.model.forward_head(a).detach())
        >>> s = imp.summary(["a", "b", "c"]); s["kind"], sum(c["images"] for c in s["classes"])
        ('exact', 4)
    """

    def __init__(self, evidence: ClassEvidence, basis: torch.Tensor, centre: torch.Tensor):
        self.evidence, self.basis, self.centre = evidence, basis, centre
        self.projections = concept_logits(evidence, basis, centre)   # once: V·Wᵀ reads the whole head
        k, classes = basis.shape[0], evidence.offset().shape[0]
        self.count = np.zeros(classes)
        self.sums = {"concepts": np.zeros((classes, k)), "centre": np.zeros(classes), "residual": np.zeros(classes),
                     "bias": np.zeros(classes), "logit": np.zeros(classes)}
        self.closure = 0.0

    def add(self, maps: torch.Tensor, codes: torch.Tensor, logits: torch.Tensor) -> None:
        """Add one batch.

        Args:
            maps: A (B, C, H, W), the layer's maps.
            codes: U (B, K, H, W), their concept codes.
            logits: (B, classes) the model's logits on the same images.
        """
        pred = logits.argmax(1)
        terms = exact_terms(self.evidence, maps, codes, self.basis, self.centre, pred[:, None],
                            projections=self.projections)
        total = terms["concepts"].sum(1) + terms["centre"] + terms["residual"] + terms["bias"]
        self.closure = max(self.closure, float((total[:, 0] - logits.gather(1, pred[:, None])[:, 0]).abs().max()))
        idx = pred.numpy()
        np.add.at(self.count, idx, 1)
        np.add.at(self.sums["concepts"], idx, terms["concepts"][:, :, 0].double().numpy())
        for key in ("centre", "residual", "bias"):
            np.add.at(self.sums[key], idx, terms[key][:, 0].double().numpy())
        np.add.at(self.sums["logit"], idx, logits.gather(1, pred[:, None])[:, 0].double().numpy())

    def summary(self, class_names: list[str], top: int = 3) -> dict[str, object]:
        """The mean exact split of each predicted class's logit, and each concept's mean contribution.

        Per predicted class: images, mean logit and its parts, the top concepts and the share of the evidence
        (logit − bias) they carry; per concept its mean contribution over all images.

        Args:
            class_names: the name of each class index.
            top: concepts listed per class.

        Returns:
            ``{"kind": "exact", "max_closure_error", "classes": [per predicted class], "per_concept": [...]}``.
        """
        per_class = []
        for c in np.nonzero(self.count)[0]:
            n = self.count[c]
            mean = {k: v[c] / n for k, v in self.sums.items()}
            evidence = mean["logit"] - mean["bias"]
            order = np.argsort(-mean["concepts"])[:top]
            share = float(mean["concepts"][order].sum() / evidence) if evidence != 0 else float("nan")
            per_class.append({"class": int(c), "name": class_names[c] if c < len(class_names) else str(c),
                              "images": int(n), "logit": float(mean["logit"]), "bias": float(mean["bias"]),
                              "centre": float(mean["centre"]), "residual": float(mean["residual"]),
                              "contributions": [float(v) for v in mean["concepts"]],
                              "top_concepts": [int(m) for m in order], "top_share": share,
                              "concepts_share": float(mean["concepts"].sum() / evidence) if evidence else float("nan")})
        per_concept = self.sums["concepts"].sum(0) / max(1.0, self.count.sum())
        return {"kind": "exact", "max_closure_error": self.closure, "classes": per_class,
                "per_concept": [float(v) for v in per_concept]}


class _Capture:
    """A forward hook on ``layer``: keeps its output for gradients, or replaces it with output − ``remove``."""

    def __init__(self, module: nn.Module):
        self.module, self.remove, self.output = module, None, None

    def __enter__(self) -> "_Capture":
        self.handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()

    def _hook(self, _m, _i, out):
        if self.remove is not None:
            return out - self.remove.to(out.dtype)
        out.retain_grad()
        self.output = out
        return None


def deletion_check(net: nn.Module, layer: str, x: torch.Tensor, codes: torch.Tensor, basis: torch.Tensor,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """Gradient × activation estimates and measured deletion drops of each concept on one batch.

    The layer's output may be maps (channels first or last) or tokens with prefix tokens (read on their
    grid; the prefix tokens are left as they are). The class of each image is its predicted one.

    Args:
        net: the model (eval mode).
        layer: the layer whose map was factorised.
        x: inputs (B, 3, H, W).
        codes: U (B, K, h, w) of the layer's maps on ``x``.
        basis: V (K, C).
        seed: seeds the random components.

    Returns:
        ``{"estimate": (B, K), "drop": (B, K) logit − logit with concept m's component U_m·V_m removed,
        "random_drop": (B, K) the same with a random component of equal norm removed}``.

    Examples:
        A head that is linear after the layer: the estimate is then the measured drop, exactly.

        >>> net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> check = deletion_check(net.eval(), "1", torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), torch.rand(3, 4))
        >>> check["random_drop"].shape, bool(np.allclose(check["estimate"], check["drop"], atol=1e-5))
        ((2, 3), True)
    """
    module = net.get_submodule(layer)
    gen = torch.Generator().manual_seed(seed)
    parts = torch.einsum("bkhw,kc->kbchw", codes, basis)                    # (K, B, C, h, w)
    with _Capture(module) as cap, torch.enable_grad():
        # the input asks for gradients, so the layer's output carries them even in a model without parameters
        logits = net(x.detach().clone().requires_grad_(True))
        pred = logits.argmax(1)
        chosen = logits.gather(1, pred[:, None])[:, 0]
        chosen.sum().backward()
        # tokens and channels-last outputs are read as maps, and a map change is put back in their layout
        layout = layer_layout(net, layer, cap.output, input_shape=x.shape)
        grad = layout.maps(cap.output.grad.detach()).float().cpu()
        acts = layout.maps(cap.output.detach()).float().cpu()
    estimate = (parts * grad[None]).sum((2, 3, 4)).T                          # (B, K)
    drops, random_drops = [], []
    base = chosen.detach().cpu()
    with _Capture(module) as cap, torch.no_grad():
        for part in parts:
            cap.remove = layout.output_of(part).to(x.device)
            drops.append(base - net(x).gather(1, pred[:, None])[:, 0].cpu())
            cap.remove = layout.output_of(_random_component(acts, part, gen)).to(x.device)
            random_drops.append(base - net(x).gather(1, pred[:, None])[:, 0].cpu())
    return {"estimate": estimate.numpy(), "drop": torch.stack(drops, 1).numpy(),
            "random_drop": torch.stack(random_drops, 1).numpy()}


def _random_component(acts: torch.Tensor, part: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The component of ``acts`` along a random channel direction, scaled per image to ``part``'s norm."""
    r = torch.randn(acts.shape[1], generator=gen)
    r = r / r.norm()
    comp = torch.einsum("bchw,c->bhw", acts, r)[:, None] * r[None, :, None, None]
    scale = part.flatten(1).norm(dim=1) / comp.flatten(1).norm(dim=1).clamp(min=1e-12)
    return comp * scale[:, None, None, None]


def faithfulness(checks: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Summary of :func:`deletion_check` batches: how well the estimates predict the measured drops.

    Reports the correlation of estimates with measured drops, and the mean drop of each image's
    top-estimated concept against a random component of the same norm.

    Args:
        checks: the per-batch results.

    Returns:
        ``{"images", "correlation", "top_concept_drop", "random_drop", "mean_abs_error"}``.

    Examples:
        >>> faithfulness([{"estimate": np.array([[1., 0.]]), "drop": np.array([[2., 0.]]),
        ...                "random_drop": np.array([[0.5, 0.1]])}])["top_concept_drop"]
        2.0
    """
    est = np.concatenate([c["estimate"] for c in checks])
    drop = np.concatenate([c["drop"] for c in checks])
    rnd = np.concatenate([c["random_drop"] for c in checks])
    top = est.argmax(1)
    rows = np.arange(len(est))
    corr = float(np.corrcoef(est.ravel(), drop.ravel())[0, 1]) if est.size > 1 and est.std() and drop.std() else 0.0
    return {"images": int(len(est)), "correlation": corr, "top_concept_drop": float(drop[rows, top].mean()),
            "random_drop": float(rnd[rows, top].mean()), "mean_abs_error": float(np.abs(est - drop).mean())}
