"""``inspectnet decompose``: influence map → decomposed head → evaluation, ablation, retraining, slimming.

The maths is in :mod:`inspectnet.analysis.heads` (influence, decompose, slim); this module runs it
in order on two probe records and writes what each step gives into one output folder.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from inspectnet.analysis.heads.decompose import (
    check_same_model,
    decompose_model,
    evaluate_decomposition,
    head_of,
    linear_params,
    noise_ablation,
    retrain_head,
    sweep,
    sweep_plot,
    sweep_table,
)
from inspectnet.analysis.heads.influence import InfluenceMap, check_k, fit_influence
from inspectnet.analysis.heads.slim import slim_model
from inspectnet.core.errors import InspectnetError
from inspectnet.core.storage import atomic_write_json, atomic_write_text, output_dir
from inspectnet.data import check_data_spec, load_data
from inspectnet.models.layers import PRE_LOGITS
from inspectnet.models.zoo import ZooModel, save_model
from inspectnet.probe.record import ProbeRecord
from inspectnet.training.loop import evaluate


def run_decomposition(fit: ProbeRecord | str | Path, eval_record: ProbeRecord | str | Path, out: str | Path, *,
                      zm: ZooModel | None, k1: int = 5, k2: int = 5, layer: str = PRE_LOGITS,
                      retrain_epochs: int = 0, retrain_lr: float = 0.1, slim: bool = False,
                      sweep_k: list[int] | None = None, data: str | None = None, limit: int | None = None,
                      class_map: dict[str, int | str] | None = None, device: str = "auto", seed: int = 0,
                      score: str = "magnitude") -> dict[str, Any]:
    """Everything ``inspectnet decompose`` does; returns (and writes) ``out/decomposition.json``.

    Writes ``influence.json``, ``model/`` (the decomposed model), ``slim_model/`` with ``slim``, and
    ``sweep.md`` / ``sweep.png`` with ``sweep_k``. At a ``layer`` other than ``pre_logits`` only the
    influential filters are fitted (``influence.json``); no head is decomposed.

    Args:
        fit: the record (or its folder) the influence map is fitted on.
        eval_record: the record (or its folder) it is evaluated on.
        out: the output folder.
        zm: the model the records were probed with (needed at ``pre_logits``).
        k1: top features kept per sample.
        k2: influential features chosen per class.
        layer: the recorded layer.
        retrain_epochs: epochs of retraining the decomposed head (0: none).
        retrain_lr: the retraining's learning rate.
        slim: also slim the decomposed model.
        sweep_k: k values of a (k1, k2) sweep.
        data: data (its classes mapped onto the model's, by name or ``class_map``) on which the saved
            model is measured end to end.
        limit: the first ``limit`` samples of ``data``.
        class_map: data class -> model class.
        device: where to run the model.
        seed: seeds the noise ablation and the retraining.
        score: how features are ranked (see :func:`~inspectnet.analysis.heads.influence.fit_influence`).

    Returns:
        The decomposition document.

    Raises:
        InspectnetError: ``zm`` is missing at ``pre_logits``, ``retrain_epochs`` is negative, or ``limit`` is
            below 1.

    Examples:
        >>> doc = run_decomposition("rec/train", "rec/test", "out", zm=zm, k1=5, k2=5)   # doctest: +SKIP
    """
    fit_rec, eval_rec = _record(fit), _record(eval_record)
    check_same_model(fit_rec, eval_rec, zm)
    if layer == PRE_LOGITS and zm is None:
        raise InspectnetError("decompose needs --model: the model the records were probed with (its head's "
                              "weights define the decomposed head)")
    check_k(k1, k2, fit_rec.activations(layer).shape[1])
    if retrain_epochs < 0:
        raise InspectnetError(f"--retrain-epochs must be 0 or more, got {retrain_epochs}")
    if data is not None:  # checked now: a bad spec found after model/ is saved would leave a partial result
        check_data_spec(data)
    if limit is not None and limit < 1:
        raise InspectnetError(f"--limit must be at least 1, got {limit}")
    out = output_dir(out)
    if layer != PRE_LOGITS:
        imap = fit_influence(fit_rec, k1, k2, layer=layer)
        imap.save(out / "influence.json")
        return {"k1": k1, "k2": k2, "layer": layer, "num_classes": imap.num_classes, "supports": imap.supports}
    weight, bias = linear_params(head_of(zm))
    imap = fit_influence(fit_rec, k1, k2, layer=layer, score=score, weight=weight)
    imap.save(out / "influence.json")
    doc: dict[str, Any] = {
        "k1": k1, "k2": k2, "score": score, "layer": layer, "num_classes": imap.num_classes,
        "class_names": imap.class_names, "supports": imap.supports, "frequencies": imap.frequencies,
        "empty_classes": imap.empty_classes, **evaluate_decomposition(weight, bias, imap, eval_rec),
        "noise_ablation": noise_ablation(weight, bias, imap, eval_rec, seed=seed),
        "fit_record": str(fit_rec.root), "eval_record": str(eval_rec.root),
        "weights_fingerprint": imap.weights_fingerprint,
    }
    dzm = decompose_model(zm, imap)
    save_model(dzm, out / "model")
    doc["model_dir"] = str(out / "model")
    doc["model_form"] = "decomposed head"
    if retrain_epochs:
        dzm = _keep_better(dzm, doc, fit_rec, eval_rec, imap, retrain_epochs, retrain_lr, seed, out)
    doc["decomposition"] = dzm.head.decomposition()
    if sweep_k:
        doc["sweep"] = sweep(fit_rec, eval_rec, weight, bias, sweep_k, sweep_k, score=score)
        atomic_write_text(out / "sweep.md", sweep_table(doc["sweep"]))
        sweep_plot(doc["sweep"], out / "sweep.png")
    final = dzm
    if slim:
        final, doc["slim"] = _slim(dzm, out / "slim_model")
    if data:
        doc["accuracy_model_on_data"] = _accuracy_on(final, data, limit, device, class_map)
    atomic_write_json(out / "decomposition.json", doc)
    return doc


def _record(record: ProbeRecord | str | Path) -> ProbeRecord:
    return record if isinstance(record, ProbeRecord) else ProbeRecord.load(record)


def _keep_better(dzm: ZooModel, doc: dict[str, Any], fit_rec: ProbeRecord, eval_rec: ProbeRecord, imap: InfluenceMap,
                 epochs: int, lr: float, seed: int, out: Path) -> ZooModel:
    """Retrain a copy of the decomposed head on the fit record's features (saved to ``retrained_model/``).

    ``doc``'s ``model_dir``/``model_form`` name the better of the two on the eval record (ties: retrained),
    and ``model_choice`` says why. Returns that model.
    """
    retrained = copy.deepcopy(dzm)
    history = retrain_head(retrained.head, fit_rec.features, fit_rec.labels, epochs=epochs, lr=lr, seed=seed)
    weight, bias = linear_params(retrained.head)
    acc = evaluate_decomposition(weight, bias, imap, eval_rec)["accuracy_decomposed"]
    save_model(retrained, out / "retrained_model")
    doc.update(retrain_history=history, accuracy_retrained=acc, retrain_epochs=epochs)
    before = doc["accuracy_decomposed"]
    if acc >= before:
        doc.update(model_dir=str(out / "retrained_model"), model_form=f"decomposed head retrained {epochs} epochs",
                   model_choice=f"retraining kept or raised A_d ({before:.4f} -> {acc:.4f})")
        return retrained
    doc["model_choice"] = (f"retraining {epochs} epochs lowered A_d ({before:.4f} -> {acc:.4f}); the un-retrained "
                           f"decomposed head is kept (the retrained one is in retrained_model/)")
    return dzm


def _slim(dzm: ZooModel, folder: Path) -> tuple[ZooModel, dict[str, Any]]:
    """The slimmed model (saved to ``folder``) and its report, or the decomposed one and why not."""
    try:
        szm, report = slim_model(dzm)
    except InspectnetError as exc:
        return dzm, {"error": str(exc)}
    save_model(szm, folder)
    return szm, {**report, "model_dir": str(folder)}


def _accuracy_on(zm: ZooModel, data: str, limit: int | None, device: str,
                 class_map: dict[str, int | str] | None) -> dict[str, Any]:
    """End-to-end accuracy of the saved model on labelled image data."""
    ds = load_data(data, zm.transform(), model_classes=zm.class_names, class_map=class_map)
    return {"data": data, "limit": limit, "accuracy": evaluate(zm, ds, device=device, limit=limit)}
