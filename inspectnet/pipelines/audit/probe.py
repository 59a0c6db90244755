"""The probe stage: one streaming pass that records every probed layer for the train and eval data."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

import numpy as np

from inspectnet.pipelines.audit.config import AuditConfig, probed_layers
from inspectnet.pipelines.audit.context import AuditContext
from inspectnet.pipelines.audit.stage import Stage
from inspectnet.probe.record import ProbeRecord
from inspectnet.reports.blocks import Block, Paragraph, Table


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
    train = run_probe(zm, ctx.dataset(cfg.data, cfg.limit), layers, ctx.out / "probe" / "train", **kw)
    ev = run_probe(zm, ctx.eval_dataset(), layers, ctx.out / "probe" / "eval", **kw) if cfg.eval_data else train
    labels = np.asarray(ev.labels)
    eval_limit = cfg.eval_limit if cfg.eval_data else cfg.limit
    return {"layers": layers, "analysed_layer": analysed,
            "train": {"data": cfg.data, "samples": len(train), "available": len(ctx.aligned(cfg.data)),
                      "limit": cfg.limit, **_classes_of(train)},
            "eval": {"data": eval_spec, "samples": len(ev), "available": len(ctx.aligned(eval_spec)),
                     "limit": eval_limit, "in_sample": cfg.eval_data is None, **_classes_of(ev)},
            "num_classes": zm.num_classes, "index_order": ctx.index_order,
            "accuracy": ev.accuracy() if (labels >= 0).any() else None,
            "feature_dim": int(ev.manifest["features_dim"]),
            "positions": {e["name"]: Layout.from_dict(e["layout"]).describe()
                          for e in train.manifest["layers"] if e.get("layout")}}


def _classes_of(record: ProbeRecord) -> dict[str, Any]:
    """The model classes a record has labelled samples of, and how the data's classes were mapped."""
    labels = np.asarray(record.labels)
    return {"classes_present": [int(c) for c in np.unique(labels[labels >= 0])],
            "label_mapping": record.manifest.get("label_mapping"), "label_set": record.manifest["data"].get("label_set")}


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
              params=lambda c: {**_probe_params(c), "format": 2}, resumable=True, distributed=True)
