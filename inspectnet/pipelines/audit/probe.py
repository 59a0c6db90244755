"""The probe stage: one streaming pass that records every probed layer for the train and eval data."""

from __future__ import annotations

import collections
from typing import Any, NotRequired, TypedDict

import numpy as np

from inspectnet.data import ImageDataset
from inspectnet.pipelines.audit.config import AuditConfig, probed_layers
from inspectnet.pipelines.audit.context import AuditContext
from inspectnet.pipelines.audit.stage import Stage
from inspectnet.probe.record import ProbeRecord
from inspectnet.reports.blocks import Block, Paragraph, Table

MAX_NAMES = 20  # photo names a card lists


# The analyses are imported inside each stage: a fully cached audit must not pay for importing
# scikit-learn, captum or onnx.
class SplitFacts(TypedDict):
    """One split (fit or eval) as probed."""

    data: str
    samples: int
    available: int
    limit: int | None
    in_sample: NotRequired[bool]
    classes_present: list[int]
    label_mapping: dict[str, Any] | None
    label_set: str | None


class ProbeResult(TypedDict):
    """The probe stage's result in card.json."""

    layers: list[str]
    analysed_layer: str
    train: SplitFacts
    eval: SplitFacts
    num_classes: int
    index_order: bool
    accuracy: float | None
    feature_dim: int
    accuracy_among_present: NotRequired[float | None]  # top-1 among the classes with data only
    nested: NotRequired[dict[str, int] | None]  # files in sub-folders of their class folder, per split
    sources: NotRequired[dict[str, Any] | None]  # photos both splits were cut from (crops), None: independent images
    confusions: NotRequired[list[dict[str, Any]]]  # per class with eval data: the classes the model gave instead


def run(ctx: AuditContext) -> ProbeResult:
    """Probe the train and eval data in one streaming pass each; the eval record is the train record when in-sample.

    Args:
        ctx: the audit's context (model, config, data, output folder, earlier stages' results).

    Returns:
        The stage's result, as card.json stores it.
    """
    from inspectnet.models.layout import Layout
    from inspectnet.probe.recorder import run_probe

    cfg, zm = ctx.config, ctx.zm
    layers, analysed = probed_layers(zm, cfg)
    eval_spec = cfg.eval_data or cfg.data
    kw = dict(batch_size=cfg.batch_size, device=cfg.device, show_progress=None, num_workers=ctx.num_workers,
              shard_order=ctx.shard_order)
    fit_data = ctx.dataset(cfg.data, cfg.limit)
    eval_data = ctx.eval_dataset() if cfg.eval_data else None
    train = run_probe(zm, fit_data, layers, ctx.out / "probe" / "train", **kw)
    ev = run_probe(zm, eval_data, layers, ctx.out / "probe" / "eval", **kw) if eval_data is not None else train
    labels = np.asarray(ev.labels)
    eval_limit = cfg.eval_limit if cfg.eval_data else cfg.limit
    facts = _classes_of(train), _classes_of(ev)
    present = sorted(set(facts[0]["classes_present"]) | set(facts[1]["classes_present"]))
    return {"layers": layers, "analysed_layer": analysed,
            "train": {"data": cfg.data, "samples": len(train), "available": len(ctx.aligned(cfg.data)),
                      "limit": cfg.limit, **facts[0]},
            "eval": {"data": eval_spec, "samples": len(ev), "available": len(ctx.aligned(eval_spec)),
                     "limit": eval_limit, "in_sample": cfg.eval_data is None, **facts[1]},
            "num_classes": zm.num_classes, "index_order": ctx.index_order,
            "accuracy": ev.accuracy() if (labels >= 0).any() else None,
            "feature_dim": int(ev.manifest["features_dim"]),
            "accuracy_among_present": _accuracy_among(ev, present),
            "sources": _shared_sources(fit_data, eval_data) if eval_data is not None else None,
            "nested": _nested_counts(fit_data, eval_data),
            "confusions": _confusions(ev, zm.class_names),
            "positions": {e["name"]: Layout.from_dict(e["layout"]).describe()
                          for e in train.manifest["layers"] if e.get("layout")}}


def _classes_of(record: ProbeRecord) -> dict[str, Any]:
    """The model classes a record has labelled samples of, and how the data's classes were mapped."""
    labels = np.asarray(record.labels)
    return {"classes_present": [int(c) for c in np.unique(labels[labels >= 0])],
            "label_mapping": record.manifest.get("label_mapping"), "label_set": record.manifest["data"].get("label_set")}


def _accuracy_among(record: ProbeRecord, present: list[int]) -> float | None:
    """Top-1 accuracy when the model chooses among the classes with data only (their logits), on the labelled samples.

    The accuracy a model trained on these classes alone would be compared with.
    """
    from inspectnet.core.streaming import row_blocks

    labels = np.asarray(record.labels)
    if not present or not (labels >= 0).any():
        return None
    logits, cols = record.logits, np.asarray(present)
    choice = np.concatenate([cols[np.asarray(logits[rows])[:, cols].argmax(axis=1)] for rows in row_blocks(len(logits))])
    mask = labels >= 0
    return float((choice[mask] == labels[mask]).mean())


def _nested_counts(fit: ImageDataset, ev: ImageDataset | None) -> dict[str, int] | None:
    """How many fitting and evaluation files lie in sub-folders of their class folder; None when none do."""
    counts = {name: sum(flags) for name, d in (("fit", fit), ("eval", ev)) if d is not None
              and (flags := d.nested()) is not None}
    return counts if any(counts.values()) else None


def _shared_sources(fit: ImageDataset, ev: ImageDataset) -> dict[str, Any] | None:
    """How many photos the fitting and evaluation crops were cut from, and how many photos both splits share.

    None when the samples are images of their own.
    """
    fo, eo = fit.origins(), ev.origins()
    if fo is None or eo is None:
        return None
    shared = sorted(set(fo) & set(eo))
    return {"fit": len(set(fo)), "eval": len(set(eo)), "shared": len(shared), "names": shared[:MAX_NAMES]}


def _confusions(record: ProbeRecord, names: list[str]) -> list[dict[str, Any]]:
    """Per class with labelled eval samples.

    How many, how many the model got right, and the (at most three) classes it gave instead with their counts and the
    kind of object a class shares with the label.
    """
    from inspectnet.data.labels import shared_kind

    labels, preds = np.asarray(record.labels), np.asarray(record.predictions)
    rows = []
    for c in np.unique(labels[labels >= 0]).tolist():
        got = preds[labels == c]
        others = collections.Counter(int(p) for p in got if p != c)
        rows.append({"class": c, "samples": int(got.size), "correct": int((got == c).sum()),
                     "instead": [{"class": k, "count": v, "kind": shared_kind(names, c, k)}
                                 for k, v in others.most_common(3)]})
    return rows


def blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
    """The fit/eval sizes and the probed layers.

    Args:
        doc: the card document.
        r: this stage's result.

    Returns:
        The section's blocks.
    """
    return [Table(["split", "data", "samples"], [["fit", r["train"]["data"], r["train"]["samples"]],
                                                 ["eval", r["eval"]["data"], r["eval"]["samples"]]]),
            Paragraph("probed layers: " + ", ".join(_with_positions(k, r.get("positions", {})) for k in r["layers"]))]


def _with_positions(layer: str, positions: dict[str, str]) -> str:
    """A layer's name, and how its units' positions were read where the record says (tokens excluded)."""
    return f"{layer} ({positions[layer]})" if layer in positions else layer


def _probe_params(c: AuditConfig) -> dict[str, Any]:
    return {"data": c.data, "eval": c.eval_data, "layers": c.layers, "layer": c.layer, "limit": c.limit,
            "eval_limit": c.eval_limit, "class_map": c.class_map}


STAGE = Stage("probe", "Probed samples and layers", run, blocks=blocks,
              params=lambda c: {**_probe_params(c), "format": 3}, resumable=True, distributed=True)
