"""Decomposing a classifier head along influential features ("Decomposing the Deep", Badola et al.): the maths around it.

logit_c = Σ_{j∈S_c} W[c, j]·f_j + b_c, built from the original linear head and an
:class:`~inspectnet.analysis.heads.influence.InfluenceMap`. The head module itself,
:class:`~inspectnet.models.heads.DecomposedLinear`, lives with the models (saved decomposed models
load without this module); here are its evaluation on a probe record (A_f, A_d, rA), the noise
ablation, retraining on recorded features, exact per-class contributions and the (k1, k2) sweep.
``inspectnet decompose`` is :func:`inspectnet.pipelines.decompose.run_decomposition`.

>>> from inspectnet.analysis.heads.influence import InfluenceMap
>>> head = nn.Linear(4, 2)
>>> dec = decompose_head(head, InfluenceMap.full(2, 4))
>>> x = torch.randn(3, 4); bool(torch.equal(dec(x), head(x)))
True
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from inspectnet.analysis.heads.contributions import (
    _feature_blocks,
    class_contributions,
    class_feature_means,
    mean_contributions,
)
from inspectnet.analysis.heads.influence import InfluenceMap, fit_influence, record_labels
from inspectnet.analysis.heads.retrain import retrain_head
from inspectnet.core.errors import InspectnetError
from inspectnet.core.tables import format_value
from inspectnet.models.heads import DecomposedLinear
from inspectnet.models.layers import PRE_LOGITS, eval_mode
from inspectnet.models.surgery import DECOMPOSED, set_submodule
from inspectnet.models.zoo import ZooModel
from inspectnet.probe.hooks import Probe

if TYPE_CHECKING:
    from inspectnet.probe.record import ProbeRecord

__all__ = ["check_same_model", "class_contributions", "class_feature_means", "decompose_head", "decompose_model",
           "evaluate_decomposition", "gathered_logits", "head_of", "linear_params", "mean_contributions",
           "noise_ablation", "per_class_accuracy", "retention", "retrain_head", "sweep", "sweep_plot", "sweep_table",
           "top_contributions"]


def decompose_head(head: nn.Module, imap: InfluenceMap) -> DecomposedLinear:
    """A decomposed copy of the dense linear ``head`` along ``imap``'s supports (checked against its shape).

    Args:
        head: the dense linear head.
        imap: the influence map (fitted at ``pre_logits``).

    Returns:
        The decomposed head.

    Raises:
        InspectnetError: the map was fitted at another layer, or its classes × features differ from the head's.

    Examples:
        >>> decompose_head(nn.Linear(3, 2), InfluenceMap.full(2, 3, supports=[[0], [1, 2]])).macs()
        3
    """
    if imap.layer != PRE_LOGITS:
        raise InspectnetError(f"the influence map was fitted at layer {imap.layer!r}; decomposing the head "
                              f"needs one fitted at pre_logits (the head's input)")
    if isinstance(head, nn.Linear) and (imap.num_classes, imap.dim) != (head.out_features, head.in_features):
        raise InspectnetError(f"influence map is for {imap.num_classes} classes x {imap.dim} features but the "
                              f"head is {head.out_features} x {head.in_features}")
    return DecomposedLinear.from_linear(head, imap.mask())


def gathered_logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    supports: list[list[int]]) -> torch.Tensor:
    """The formula term by term: logit_c = Σ_{j∈S_c} W[c,j] f_j + b_c (a reference for tests).

    Args:
        features: (N, d) features.
        weight: the (C, d) head weight.
        bias: the (C,) bias, or None.
        supports: per class, the features S_c it uses.

    Returns:
        (N, C) logits.

    Examples:
        >>> gathered_logits(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0]]), torch.tensor([0.5]), [[1]])
        tensor([[8.5000]])
    """
    cols = [(features[:, s] * weight[c, s]).sum(dim=1) for c, s in enumerate(supports)]
    out = torch.stack(cols, dim=1)
    return out + bias if bias is not None else out


def head_of(zm: ZooModel) -> nn.Linear:
    """The model's head, refused with its module name when it is not linear.

    Args:
        zm: the model.

    Returns:
        The linear head.

    Raises:
        InspectnetError: the head is not an ``nn.Linear``.
    """
    head = zm.model.get_submodule(zm.head_name)
    if not isinstance(head, nn.Linear):
        raise InspectnetError(f"head module {zm.head_name!r} of {zm.spec} is a {type(head).__name__}, not a "
                              f"linear layer; decomposition needs logits = W f + b")
    return head


def decompose_model(zm: ZooModel, imap: InfluenceMap) -> ZooModel:
    """A copy of ``zm`` whose head is decomposed along ``imap``; the zoo saves and loads it back.

    Args:
        zm: the model (unchanged).
        imap: the influence map, fitted on a record of this model's weights.

    Returns:
        The decomposed model.

    Raises:
        InspectnetError: the map was fitted on a record of other weights, or does not fit the head.

    Examples:
        >>> dzm = decompose_model(zm, imap); save_model(dzm, "out/model")   # doctest: +SKIP
    """
    head = head_of(zm)
    if imap.weights_fingerprint and imap.weights_fingerprint != zm.fingerprint():
        raise InspectnetError(f"the influence map was fitted on a record of weights {imap.weights_fingerprint} "
                              f"but the model {zm.spec} has weights {zm.fingerprint()}; probe this model again")
    dec = decompose_head(head, imap)
    model = copy.deepcopy(zm.model)
    set_submodule(model, zm.head_name, dec)
    mod = {"kind": DECOMPOSED, "head_name": zm.head_name, "in_features": head.in_features,
           "out_features": head.out_features, "bias": head.bias is not None, "k1": imap.k1, "k2": imap.k2}
    # replace keeps every other description field (constructor arguments included) as the model had it
    return dataclasses.replace(zm, model=model, data_config=dict(zm.data_config), class_names=list(zm.class_names),
                               modifications=[*zm.modifications, mod])


def linear_params(head: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The head's weight and bias as float64 CPU tensors; a decomposed head gives its masked weight.

    Args:
        head: a linear (or decomposed) head.

    Returns:
        ``(W (C, d), b (C,) or None)``.
    """
    w = head.effective_weight() if isinstance(head, DecomposedLinear) else head.weight
    b = head.bias.detach().double().cpu() if head.bias is not None else None
    return w.detach().double().cpu(), b


def top_contributions(zm: ZooModel, x: torch.Tensor, k: int = 5) -> list[dict[str, Any]]:
    """For each input, the predicted class and its top-``k`` contributing features (one forward pass).

    Feature indices are the original penultimate indices (also after slimming).

    Args:
        zm: the model.
        x: (N, C, H, W) preprocessed images.
        k: features per input.

    Returns:
        ``[{"class", "label", "logit", "bias", "top": [{"feature", "value", "contribution"}]}]``.
    """
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


def check_same_model(fit_record: ProbeRecord, eval_record: ProbeRecord, zm: ZooModel | None = None) -> None:
    """Fit and eval records (and the model, when given) must come from the same weights.

    Args:
        fit_record: the record the influence map is fitted on.
        eval_record: the record it is evaluated on.
        zm: the model, when one is given.

    Raises:
        InspectnetError: the records' weights differ from each other or from the model's.
    """
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
    """Accuracy on each class's samples; None for classes absent from ``labels``.

    Args:
        pred: predicted classes.
        labels: true classes.
        num_classes: C.

    Returns:
        C accuracies.

    Examples:
        >>> per_class_accuracy(np.array([0, 1, 1]), np.array([0, 0, 1]), 3)
        [0.5, 1.0, None]
    """
    out: list[float | None] = []
    for c in range(num_classes):
        sel = labels == c
        out.append(float((pred[sel] == c).mean()) if sel.any() else None)
    return out


def retention(accuracy_decomposed: float, accuracy_full: float) -> tuple[float | None, str | None]:
    """The retention rA = A_d / A_f, or None with the reason where it is undefined (never NaN).

    Args:
        accuracy_decomposed: A_d.
        accuracy_full: A_f.

    Returns:
        ``(rA, None)``, or ``(None, reason)``.

    Examples:
        >>> retention(0.5, 0.8), retention(0.0, 0.0)[1]
        ((0.625, None), 'A_f = 0: the full head classifies no eval sample correctly, so A_d / A_f is undefined')
    """
    if accuracy_full > 0:
        return accuracy_decomposed / accuracy_full, None
    return None, "A_f = 0: the full head classifies no eval sample correctly, so A_d / A_f is undefined"


def evaluate_decomposition(weight: torch.Tensor, bias: torch.Tensor | None, imap: InfluenceMap,
                           eval_record: ProbeRecord) -> dict[str, Any]:
    """A_f, A_d, rA, agreement, per-class accuracy, union size and head MACs on ``eval_record``.

    Logits are recomputed from the record's features block by block, so no model pass is needed and
    memory stays O(C·d + block). Accuracy is top-1 over all C classes. Classes without fitting data keep
    their dense rows (``dense_classes``); the decomposed MACs count them.

    Args:
        weight: the dense head's weight (see :func:`linear_params`).
        bias: its bias, or None.
        imap: the influence map.
        eval_record: the record the decomposition is evaluated on.

    Returns:
        The evaluation, JSON-ready.
    """
    labels = record_labels(eval_record, imap.num_classes)
    mask = imap.mask()
    masked = weight * mask.double()
    fitted = torch.tensor(sorted(set(range(imap.num_classes)) - set(imap.empty_classes)), dtype=torch.int64)
    recorded = eval_record.logits
    preds = {key: np.empty(len(labels), np.int64) for key in ("full", "decomposed", "full_fitted", "decomposed_fitted")}
    max_diff = 0.0
    for rows, feats in _feature_blocks(eval_record):
        logits = {"full": _logits(feats, weight, bias), "decomposed": _logits(feats, masked, bias)}
        for key, z in logits.items():
            preds[key][rows] = z.argmax(1).numpy()
            preds[f"{key}_fitted"][rows] = fitted[z[:, fitted].argmax(1)].numpy()
        max_diff = max(max_diff, float((logits["full"] - torch.from_numpy(np.array(recorded[rows], np.float64)))
                                       .abs().max()))
    pf, pd = preds["full"], preds["decomposed"]
    a_f, a_d = _accuracy(pf, labels), _accuracy(pd, labels)
    r_a, why = retention(a_d, a_f)
    c, d = weight.shape
    used = int(mask.any(dim=0).sum())
    doc = {
        "accuracy_full": a_f, "accuracy_decomposed": a_d, "rA": r_a, **({"rA_undefined": why} if why else {}),
        "agreement": float((pf == pd).mean()),
        "per_class_accuracy_full": per_class_accuracy(pf, labels, c),
        "per_class_accuracy_decomposed": per_class_accuracy(pd, labels, c),
        "union_size": len(imap.union()), "features_used": used, "feature_dim": d,
        "dense_classes": len(imap.empty_classes),
        "head_macs_full": c * d, "head_macs_decomposed": int(mask.sum()), "head_macs_gathered_dense": c * used,
        "recorded_logits_max_abs_diff": max_diff,
    }
    if imap.empty_classes:
        doc["among_fitted_classes"] = _among_fitted(preds, labels, fitted)
    return doc


def _among_fitted(preds: dict[str, np.ndarray], labels: np.ndarray, fitted: torch.Tensor) -> dict[str, Any]:
    """A_f, A_d and rA when only the classes with fitting data compete (top-1 among them).

    Measured on the eval samples of those classes: how well the influential sets separate the classes
    the data covers, where the dense rows of the other classes would otherwise win the top-1 over all C.
    """
    keep = np.isin(labels, fitted.numpy())
    if not keep.any():
        return {"num_classes": len(fitted), "samples": 0,
                "why": "no eval sample belongs to a class with fitting data"}
    a_f = _accuracy(preds["full_fitted"][keep], labels[keep])
    a_d = _accuracy(preds["decomposed_fitted"][keep], labels[keep])
    r_a, why = retention(a_d, a_f)
    return {"num_classes": len(fitted), "samples": int(keep.sum()), "accuracy_full": a_f,
            "accuracy_decomposed": a_d, "rA": r_a, **({"rA_undefined": why} if why else {})}


def _logits(feats: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = feats @ weight.T
    return out + bias if bias is not None else out


def noise_ablation(weight: torch.Tensor, bias: torch.Tensor | None, imap: InfluenceMap, eval_record: ProbeRecord,
                   *, seed: int = 0) -> dict[str, Any]:
    """Paper Table 8: the full head's accuracy when influential (or as many other) features are noise.

    The influential features (∪ S_c), and separately as many randomly chosen non-influential features,
    are replaced with N(0, 1) samples (seeded: the noise and the non-influential subset). The record is
    read block by block (noise is drawn per block, in order). A decomposed head reads only the
    influential features, so noise elsewhere cannot change it: the ablation is about the original model.

    Args:
        weight: the dense head's weight.
        bias: its bias, or None.
        imap: the influence map.
        eval_record: the record the accuracy is measured on.
        seed: seeds the noise and the non-influential subset.

    Returns:
        The accuracies with both ablations, the feature counts, the seed and a note.
    """
    labels = record_labels(eval_record, imap.num_classes)
    gen = torch.Generator().manual_seed(seed)
    infl = torch.tensor(imap.union(), dtype=torch.int64)
    rest = torch.tensor(sorted(set(range(imap.dim)) - set(imap.union())), dtype=torch.int64)
    non = rest[torch.randperm(len(rest), generator=gen)[:len(infl)]].sort().values
    preds = {key: np.empty(len(labels), np.int64) for key in ("influential", "non_influential")}
    for rows, feats in _feature_blocks(eval_record):
        for key, cols in (("influential", infl), ("non_influential", non)):
            noisy = feats.clone()
            noisy[:, cols] = torch.randn(len(feats), len(cols), generator=gen, dtype=torch.float64)
            preds[key][rows] = _logits(noisy, weight, bias).argmax(1).numpy()
    result: dict[str, Any] = {key: _accuracy(p, labels) for key, p in preds.items()}
    note = "" if len(non) == len(infl) else \
        f"only {len(non)} non-influential features exist (fewer than the {len(infl)} influential ones)"
    return {**result, "num_influential": len(infl), "num_non_influential": len(non), "seed": seed, "note": note}


def sweep(fit_record: ProbeRecord, eval_record: ProbeRecord, weight: torch.Tensor, bias: torch.Tensor | None,
          k1_values: list[int], k2_values: list[int], score: str = "magnitude") -> list[dict[str, Any]]:
    """Paper Fig. 3: A_d, rA and union size for every (k1, k2 <= k1) pair.

    Args:
        fit_record: the record the influence maps are fitted on.
        eval_record: the record they are evaluated on.
        weight: the dense head's weight.
        bias: its bias, or None.
        k1_values: the k1 values.
        k2_values: the k2 values (pairs with k2 > k1 are skipped).
        score: how features are ranked (see :func:`~inspectnet.analysis.heads.influence.fit_influence`).

    Returns:
        One row per pair.
    """
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
    """Markdown table of a :func:`sweep`.

    Args:
        rows: the sweep's rows.

    Returns:
        The table.
    """
    head = "| k1 | k2 | A_f | A_d | rA | agreement | union | head MACs |\n|---|---|---|---|---|---|---|---|\n"
    return head + "".join(f"| {r['k1']} | {r['k2']} | {r['accuracy_full']:.4f} | {r['accuracy_decomposed']:.4f} | "
                          f"{format_value(r['rA'])} | {r['agreement']:.4f} | {r['union_size']} | "
                          f"{r['head_macs_decomposed']} |\n" for r in rows)


def sweep_plot(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """The retention rA against k2, one line per k1 (paper Fig. 3), as a PNG.

    Drawn on its own :class:`~matplotlib.figure.Figure` (Agg canvas), so the caller's pyplot state
    and backend stay as they were.

    Args:
        rows: the sweep's rows.
        path: the PNG to write.

    Returns:
        ``path`` as a ``Path``.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for k1 in sorted({r["k1"] for r in rows}):
        sel = [r for r in rows if r["k1"] == k1]
        ax.plot([r["k2"] for r in sel], [r["rA"] for r in sel], marker="o", label=f"k1={k1}")
    ax.set_xlabel("k2"), ax.set_ylabel("rA = A_d / A_f"), ax.set_title("decomposed head: effect of k1, k2")
    ax.grid(alpha=0.3), ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)
