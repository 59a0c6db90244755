"""Decomposed classifier heads: each class reads only its influential features (DESIGN.md §5.1).

logit_c = Σ_{j∈S_c} W[c, j]·f_j + b_c, built from the original linear head and an
:class:`~inspectnet.analysis.heads.influence.InfluenceMap`. The decomposition is kept as metadata (per-class
indices, weights, bias); the module computes it as a masked linear layer and can present itself
as a dense zero-filled Linear over the gathered union of used features (the form that exports best).

>>> from inspectnet.analysis.heads.influence import InfluenceMap
>>> head = nn.Linear(4, 2)
>>> dec = DecomposedLinear.from_linear(head, InfluenceMap.full(2, 4))
>>> x = torch.randn(3, 4); bool(torch.equal(dec(x), head(x)))
True
"""

import copy
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from inspectnet.analysis.heads.influence import InfluenceMap
from inspectnet.core.errors import InspectnetError
from inspectnet.models.layers import PRE_LOGITS
from inspectnet.models.zoo import ZooModel, register_modifier, set_submodule

MODIFIER = "decomposed_head"


class DecomposedLinear(nn.Linear):
    """A linear head whose class c only sees the features where ``mask[c]`` is True.

    Weights off the support are stored as exact zeros and re-masked in ``forward`` (so training
    cannot move them). ``feature_ids`` names the original feature index of each input column
    (``arange`` unless the features were slimmed to the union).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", torch.ones(out_features, in_features, dtype=torch.bool))
        self.register_buffer("feature_ids", torch.arange(in_features, dtype=torch.int64))

    @classmethod
    def from_linear(cls, head: nn.Linear, imap: InfluenceMap) -> "DecomposedLinear":
        """Build from a dense head and per-class supports (checked against the head's shape)."""
        if not isinstance(head, nn.Linear):
            raise InspectnetError(f"the head {type(head).__name__} is not a linear layer; a decomposed head needs "
                                  f"logits = W f + b")
        if imap.layer != PRE_LOGITS:
            raise InspectnetError(f"the influence map was fitted at layer {imap.layer!r}; decomposing the head "
                                  f"needs one fitted at pre_logits (the head's input)")
        if (imap.num_classes, imap.dim) != (head.out_features, head.in_features):
            raise InspectnetError(f"influence map is for {imap.num_classes} classes x {imap.dim} features but the "
                                  f"head is {head.out_features} x {head.in_features}")
        dec = cls(head.in_features, head.out_features, bias=head.bias is not None)
        mask = imap.mask().to(head.weight.device)
        with torch.no_grad():
            dec.weight.copy_(head.weight * mask)
            if head.bias is not None:
                dec.bias.copy_(head.bias)
            dec.mask.copy_(mask)
        return dec.to(head.weight.device)

    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

    def supports(self) -> list[list[int]]:
        """Per class, the original feature indices it uses."""
        ids = self.feature_ids.tolist()
        return [[ids[j] for j in torch.nonzero(row).flatten().tolist()] for row in self.mask]

    def decomposition(self) -> dict[str, Any]:
        """The decomposition as metadata: per-class indices and weights, and the bias."""
        w = self.effective_weight().detach().cpu()
        idx = [torch.nonzero(row).flatten().tolist() for row in self.mask.cpu()]
        ids = self.feature_ids.tolist()
        return {"indices": [[ids[j] for j in s] for s in idx],
                "weights": [w[c, s].tolist() for c, s in enumerate(idx)],
                "bias": self.bias.detach().cpu().tolist() if self.bias is not None else None}

    def union(self) -> list[int]:
        """Input columns (positions) that some class uses."""
        return torch.nonzero(self.mask.any(dim=0)).flatten().tolist()

    def macs(self) -> int:
        """Multiply-accumulates per sample: one per supported (class, feature) pair."""
        return int(self.mask.sum())

    def to_gathered(self) -> nn.Module:
        """Dense zero-filled Linear over the gathered union of used features (export-friendly form)."""
        keep = torch.tensor(self.union(), dtype=torch.int64, device=self.weight.device)
        lin = nn.Linear(len(keep), self.out_features, bias=self.bias is not None).to(self.weight.device)
        with torch.no_grad():
            lin.weight.copy_(self.effective_weight()[:, keep])
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return nn.Sequential(ChannelGather(keep), lin)


class ChannelGather(nn.Module):
    """Select channels (dim 1) by index: (B, d, ...) -> (B, len(index), ...)."""

    def __init__(self, index: torch.Tensor | list[int]):
        super().__init__()
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.index)


def gathered_logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    supports: list[list[int]]) -> torch.Tensor:
    """The formula term by term: logit_c = Σ_{j∈S_c} W[c,j] f_j + b_c (a reference for tests)."""
    cols = [(features[:, s] * weight[c, s]).sum(dim=1) for c, s in enumerate(supports)]
    out = torch.stack(cols, dim=1)
    return out + bias if bias is not None else out


def head_of(zm: ZooModel) -> nn.Linear:
    """The model's head, refused with its module name when it is not linear."""
    head = zm.model.get_submodule(zm.head_name)
    if not isinstance(head, nn.Linear):
        raise InspectnetError(f"head module {zm.head_name!r} of {zm.spec} is a {type(head).__name__}, not a "
                              f"linear layer; decomposition needs logits = W f + b")
    return head


def decompose_model(zm: ZooModel, imap: InfluenceMap) -> ZooModel:
    """A copy of ``zm`` whose head is decomposed along ``imap``; the zoo saves and loads it back.

    >>> dzm = decompose_model(zm, imap); save_model(dzm, "out/model")   # doctest: +SKIP
    """
    head = head_of(zm)
    if imap.weights_fingerprint and imap.weights_fingerprint != zm.fingerprint():
        raise InspectnetError(f"the influence map was fitted on a record of weights {imap.weights_fingerprint} "
                              f"but the model {zm.spec} has weights {zm.fingerprint()}; probe this model again")
    dec = DecomposedLinear.from_linear(head, imap)
    model = copy.deepcopy(zm.model)
    set_submodule(model, zm.head_name, dec)
    mod = {"kind": MODIFIER, "head_name": zm.head_name, "in_features": head.in_features,
           "out_features": head.out_features, "bias": head.bias is not None, "k1": imap.k1, "k2": imap.k2}
    return ZooModel(model=model, source=zm.source, arch=zm.arch, num_classes=zm.num_classes,
                    in_chans=zm.in_chans, data_config=dict(zm.data_config), class_names=list(zm.class_names),
                    head_name=zm.head_name, modifications=[*zm.modifications, mod], base=zm.base)


@register_modifier(MODIFIER)
def _rebuild_decomposed(model: nn.Module, mod: dict[str, Any]) -> nn.Module:
    """Put an empty DecomposedLinear of the saved shape in place; the weights fill it afterwards."""
    dec = DecomposedLinear(mod["in_features"], mod["out_features"], bias=mod["bias"])
    set_submodule(model, mod["head_name"], dec)
    return model


def linear_params(head: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W, b) as float64 CPU tensors; a decomposed head gives its masked weight."""
    w = head.effective_weight() if isinstance(head, DecomposedLinear) else head.weight
    b = head.bias.detach().double().cpu() if head.bias is not None else None
    return w.detach().double().cpu(), b


def class_contributions(head: nn.Linear, features: torch.Tensor) -> torch.Tensor:
    """Exact per-class contributions W[c, :] ⊙ f(x): (N, d) -> (N, C, d), no gradients.

    Summed over the last axis plus the bias they give the logits exactly (the head is linear).

    >>> head = nn.Linear(3, 2); f = torch.randn(4, 3)
    >>> torch.allclose(class_contributions(head, f).sum(-1) + head.bias, head(f), atol=1e-6)
    True
    """
    w = head.effective_weight() if isinstance(head, DecomposedLinear) else head.weight
    with torch.no_grad():
        return features[:, None, :] * w[None, :, :]


def top_contributions(zm: ZooModel, x: torch.Tensor, k: int = 5) -> list[dict[str, Any]]:
    """For each input, the predicted class and its top-``k`` contributing features (one forward pass).

    ``[{"class", "label", "logit", "bias", "top": [{"feature", "value", "contribution"}]}]``; feature
    indices are the original penultimate indices (also after slimming).
    """
    from inspectnet.models.layers import eval_mode
    from inspectnet.probe.hooks import Probe

    head = head_of(zm)
    with eval_mode(zm.model), torch.inference_mode(), Probe(zm.model, [PRE_LOGITS], head_name=zm.head_name) as p:
        logits = zm.model(x)
        feats = p.outputs[PRE_LOGITS]
    contrib = class_contributions(head, feats)
    ids = head.feature_ids.tolist() if isinstance(head, DecomposedLinear) else list(range(feats.shape[1]))
    out = []
    for i, c in enumerate(logits.argmax(1).tolist()):
        vals, idx = contrib[i, c].topk(min(k, feats.shape[1]))
        out.append({"class": c, "label": zm.class_names[c], "logit": float(logits[i, c]),
                    "bias": float(head.bias[c].detach()) if head.bias is not None else 0.0,
                    "top": [{"feature": ids[j], "value": float(feats[i, j]), "contribution": float(v)}
                            for v, j in zip(vals.tolist(), idx.tolist())]})
    return out


def check_same_model(fit_record: Any, eval_record: Any, zm: ZooModel | None = None) -> None:
    """Fit and eval records (and the model, when given) must come from the same weights."""
    a = fit_record.manifest["identity"]["weights_fingerprint"]
    b = eval_record.manifest["identity"]["weights_fingerprint"]
    if a != b:
        raise InspectnetError(f"fit record {fit_record.root} (weights {a}) and eval record {eval_record.root} "
                              f"(weights {b}) were made with different models")
    if zm is not None and zm.fingerprint() != a:
        raise InspectnetError(f"model {zm.spec} has weights {zm.fingerprint()} but the records were made with "
                              f"weights {a}; pass the model the records were probed with")


def _accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    keep = labels >= 0
    return float((pred[keep] == labels[keep]).mean()) if keep.any() else float("nan")


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float | None]:
    """Accuracy on each class's samples; None for classes absent from ``labels``."""
    out: list[float | None] = []
    for c in range(num_classes):
        sel = labels == c
        out.append(float((pred[sel] == c).mean()) if sel.any() else None)
    return out


def evaluate_decomposition(weight: torch.Tensor, bias: torch.Tensor | None, imap: InfluenceMap,
                           eval_record: Any) -> dict[str, Any]:
    """A_f, A_d, rA, agreement, per-class accuracy, union size and head MACs on ``eval_record``.

    ``weight``/``bias`` are the dense head's (see :func:`linear_params`); logits are recomputed
    from the record's features, so no model pass is needed.
    """
    from inspectnet.analysis.heads.influence import record_labels

    labels = record_labels(eval_record, imap.num_classes)
    feats = torch.from_numpy(np.asarray(eval_record.features, dtype=np.float64))
    full = _logits(feats, weight, bias)
    dec = _logits(feats, weight * imap.mask().double(), bias)
    pf, pd = full.argmax(1).numpy(), dec.argmax(1).numpy()
    a_f, a_d = _accuracy(pf, labels), _accuracy(pd, labels)
    c, d = weight.shape
    return {
        "accuracy_full": a_f, "accuracy_decomposed": a_d, "rA": a_d / a_f if a_f > 0 else float("nan"),
        "agreement": float((pf == pd).mean()),
        "per_class_accuracy_full": per_class_accuracy(pf, labels, c),
        "per_class_accuracy_decomposed": per_class_accuracy(pd, labels, c),
        "union_size": len(imap.union()), "feature_dim": d,
        "head_macs_full": c * d, "head_macs_decomposed": sum(len(s) for s in imap.supports),
        "head_macs_gathered_dense": c * len(imap.union()),
        "recorded_logits_max_abs_diff": float((full - torch.from_numpy(
            np.asarray(eval_record.logits, dtype=np.float64))).abs().max()),
    }


def _logits(feats: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = feats @ weight.T
    return out + bias if bias is not None else out


def noise_ablation(weight: torch.Tensor, bias: torch.Tensor | None, imap: InfluenceMap, eval_record: Any, *,
                   seed: int = 0) -> dict[str, Any]:
    """Paper Table 8: accuracy of the full head when the influential features (∪ S_c), and separately
    as many randomly chosen non-influential features, are replaced with N(0, 1) samples (seeded).

    ``decomposed_head`` repeats both with the decomposed head on the same noisy features.
    """
    from inspectnet.analysis.heads.influence import record_labels

    labels = record_labels(eval_record, imap.num_classes)
    feats = torch.from_numpy(np.asarray(eval_record.features, dtype=np.float64))
    gen = torch.Generator().manual_seed(seed)
    infl = torch.tensor(imap.union(), dtype=torch.int64)
    rest = torch.tensor(sorted(set(range(imap.dim)) - set(imap.union())), dtype=torch.int64)
    non = rest[torch.randperm(len(rest), generator=gen)[:len(infl)]].sort().values
    masked = weight * imap.mask().double()
    result: dict[str, Any] = {"decomposed_head": {}}
    for key, cols in (("influential", infl), ("non_influential", non)):
        noisy = feats.clone()
        noisy[:, cols] = torch.randn(len(feats), len(cols), generator=gen, dtype=torch.float64)
        result[key] = _accuracy(_logits(noisy, weight, bias).argmax(1).numpy(), labels)
        result["decomposed_head"][key] = _accuracy(_logits(noisy, masked, bias).argmax(1).numpy(), labels)
    note = "" if len(non) == len(infl) else \
        f"only {len(non)} non-influential features exist (fewer than the {len(infl)} influential ones)"
    return {**result, "num_influential": len(infl), "num_non_influential": len(non), "seed": seed, "note": note}


def retrain_head(head: DecomposedLinear, features: np.ndarray, labels: np.ndarray, *, epochs: int = 1,
                 lr: float = 0.1, batch_size: int = 64, seed: int = 0) -> list[dict[str, float]]:
    """Fine-tune only the supported weights (and bias) of ``head`` in place with cross-entropy.

    The backbone is frozen and in eval mode, so training on a record's features is the same as
    training through the backbone, without re-running it. Off-support weights stay exactly zero.
    """
    if epochs < 1:
        raise InspectnetError(f"--retrain-epochs must be at least 1, got {epochs}")
    keep = np.asarray(labels) >= 0
    x = torch.from_numpy(np.asarray(features, dtype=np.float32)[keep]).to(head.weight.device)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64)[keep]).to(head.weight.device)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    history = []
    head.train()
    for epoch in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        total = 0.0
        for start in range(0, len(y), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():  # belt and braces: the masked forward already gives them zero gradient
                head.weight.mul_(head.mask)
            total += loss.item() * len(idx)
        history.append({"epoch": epoch + 1, "loss": total / len(y)})
    head.eval()
    return history


def sweep(fit_record: Any, eval_record: Any, weight: torch.Tensor, bias: torch.Tensor | None,
          k1_values: list[int], k2_values: list[int], score: str = "magnitude") -> list[dict[str, Any]]:
    """Paper Fig. 3: A_d, rA and union size for every (k1, k2 <= k1) pair."""
    from inspectnet.analysis.heads.influence import fit_influence

    rows = []
    for k1 in k1_values:
        for k2 in k2_values:
            if k2 > k1 or k1 > weight.shape[1]:
                continue
            imap = fit_influence(fit_record, k1, k2, score=score, weight=weight)
            ev = evaluate_decomposition(weight, bias, imap, eval_record)
            rows.append({"k1": k1, "k2": k2, **{k: ev[k] for k in (
                "accuracy_full", "accuracy_decomposed", "rA", "agreement", "union_size", "head_macs_decomposed")}})
    return rows


def sweep_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of a :func:`sweep`."""
    head = "| k1 | k2 | A_f | A_d | rA | agreement | union | head MACs |\n|---|---|---|---|---|---|---|---|\n"
    return head + "".join(f"| {r['k1']} | {r['k2']} | {r['accuracy_full']:.4f} | {r['accuracy_decomposed']:.4f} | "
                          f"{r['rA']:.4f} | {r['agreement']:.4f} | {r['union_size']} | {r['head_macs_decomposed']} |\n"
                          for r in rows)


def sweep_plot(rows: list[dict[str, Any]], path: Any) -> None:
    """rA against k2, one line per k1 (paper Fig. 3), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for k1 in sorted({r["k1"] for r in rows}):
        sel = [r for r in rows if r["k1"] == k1]
        ax.plot([r["k2"] for r in sel], [r["rA"] for r in sel], marker="o", label=f"k1={k1}")
    ax.set_xlabel("k2"), ax.set_ylabel("rA = A_d / A_f"), ax.set_title("decomposed head: effect of k1, k2")
    ax.grid(alpha=0.3), ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_decomposition(fit: Any, eval_record: Any, out: Any, *, zm: ZooModel | None, k1: int = 5, k2: int = 5,
                      layer: str = PRE_LOGITS, retrain_epochs: int = 0, retrain_lr: float = 0.1,
                      slim: bool = False, sweep_k: list[int] | None = None, data: str | None = None,
                      limit: int | None = None, device: str = "auto", seed: int = 0,
                      score: str = "magnitude") -> dict[str, Any]:
    """Everything ``inspectnet decompose`` does; returns (and writes) ``out/decomposition.json``.

    Writes ``influence.json``, ``model/`` (the decomposed model), ``slim_model/`` with ``slim``, and
    ``sweep.md`` / ``sweep.png`` with ``sweep_k``.

    >>> doc = run_decomposition("rec/train", "rec/test", "out", zm=zm, k1=5, k2=5)   # doctest: +SKIP
    """
    from pathlib import Path

    from inspectnet.analysis.heads.influence import fit_influence
    from inspectnet.core.storage import atomic_write_json, atomic_write_text
    from inspectnet.models.zoo import save_model
    from inspectnet.probe.record import ProbeRecord

    fit_rec = fit if isinstance(fit, ProbeRecord) else ProbeRecord.load(fit)
    eval_rec = eval_record if isinstance(eval_record, ProbeRecord) else ProbeRecord.load(eval_record)
    check_same_model(fit_rec, eval_rec, zm)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if layer != PRE_LOGITS:
        imap = fit_influence(fit_rec, k1, k2, layer=layer)
        imap.save(out / "influence.json")
        return {"k1": k1, "k2": k2, "layer": layer, "num_classes": imap.num_classes, "supports": imap.supports}
    if zm is None:
        raise InspectnetError("decompose needs --model: the model the records were probed with (its head's "
                              "weights define the decomposed head)")
    weight, bias = linear_params(head_of(zm))
    imap = fit_influence(fit_rec, k1, k2, layer=layer, score=score, weight=weight)
    imap.save(out / "influence.json")
    ev = evaluate_decomposition(weight, bias, imap, eval_rec)
    doc: dict[str, Any] = {
        "k1": k1, "k2": k2, "score": score, "layer": layer, "num_classes": imap.num_classes, "class_names": imap.class_names,
        "supports": imap.supports, "frequencies": imap.frequencies, "empty_classes": imap.empty_classes,
        **ev, "noise_ablation": noise_ablation(weight, bias, imap, eval_rec, seed=seed),
        "fit_record": str(fit_rec.root), "eval_record": str(eval_rec.root),
        "weights_fingerprint": imap.weights_fingerprint,
    }
    dzm = decompose_model(zm, imap)
    if retrain_epochs:
        dhead = dzm.model.get_submodule(dzm.head_name)
        doc["retrain_history"] = retrain_head(dhead, fit_rec.features, fit_rec.labels, epochs=retrain_epochs,
                                              lr=retrain_lr, seed=seed)
        w2, b2 = linear_params(dhead)
        doc["accuracy_retrained"] = evaluate_decomposition(w2, b2, imap, eval_rec)["accuracy_decomposed"]
        doc["retrain_epochs"] = retrain_epochs
    doc["decomposition"] = dzm.model.get_submodule(dzm.head_name).decomposition()
    save_model(dzm, out / "model")
    doc["model_dir"] = str(out / "model")
    if sweep_k:
        rows = sweep(fit_rec, eval_rec, weight, bias, sweep_k, sweep_k, score=score)
        doc["sweep"] = rows
        atomic_write_text(out / "sweep.md", sweep_table(rows))
        sweep_plot(rows, out / "sweep.png")
    final = dzm
    if slim:
        from inspectnet.analysis.heads.slim import slim_model

        try:
            szm, report = slim_model(dzm)
        except InspectnetError as exc:
            doc["slim"] = {"error": str(exc)}
        else:
            save_model(szm, out / "slim_model")
            doc["slim"] = {**report, "model_dir": str(out / "slim_model")}
            final = szm
    if data:
        from inspectnet.data import load_data
        from inspectnet.training.loop import evaluate

        ds = load_data(data, final.transform())
        doc["accuracy_model_on_data"] = {"data": data, "limit": limit,
                                         "accuracy": evaluate(final, ds, device=device, limit=limit)}
    atomic_write_json(out / "decomposition.json", doc)
    return doc
