"""The attributions stage: input attributions, influential-feature maps and receptive fields."""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np

from inspectnet.core.errors import InspectnetError
from inspectnet.pipelines.audit.context import AuditContext, describe_error
from inspectnet.pipelines.audit.stage import Stage
from inspectnet.reports.blocks import Block, Failure, Figure


class AttributionsResult(TypedDict, total=False):
    """The attributions stage's result in card.json: each family of pictures, or why it failed."""

    errors: dict[str, str]
    inputs: list[dict[str, Any]]
    classes: list[dict[str, Any]]
    units: dict[str, Any]


def run(ctx: AuditContext) -> AttributionsResult:
    """Input attributions, influential-feature maps and receptive fields of the top units.

    Each family of pictures fails alone.

    Args:
        ctx: the audit's context (model, config, data, output folder, earlier stages' results).

    Returns:
        The stage's result, as card.json stores it.

    Raises:
        InspectnetError: every family of pictures failed.
    """
    from inspectnet.analysis import attributions as at

    cfg, zm = ctx.config, ctx.zm
    _, ev = ctx.records()
    ds = ctx.eval_dataset()
    labels = np.asarray(ev.labels)
    out = ctx.out / "attributions"
    result: dict[str, Any] = {"errors": {}}
    chosen = at.choose_images(labels, cfg.attribution_images)
    # each picture family is independent: one failing (e.g. no forward_features) keeps the others
    try:
        rows = at.input_attributions(zm, ds, chosen, out / "inputs", n_steps=cfg.ig_steps,
                                     internal_batch_size=cfg.batch_size)
        result["inputs"] = [{**r, "path": ctx.rel(r["path"])} for r in rows]
    except Exception as exc:  # noqa: BLE001 - reported in the card
        result["errors"]["inputs"] = describe_error(exc)
    dec = ctx.results.get("decomposition", {})
    if dec.get("status") == "ok":
        try:
            supports: list[list[int]] = [[] for _ in range(zm.num_classes)]  # per_class lists the classes with data
            for row in dec["result"]["per_class"]:
                supports[row["class"]] = row["features"]
            rows = at.influential_feature_maps(zm, ds, labels, supports, out / "classes")
            result["classes"] = [{**r, "path": ctx.rel(r["path"])} for r in rows]
        except Exception as exc:  # noqa: BLE001
            result["errors"]["classes"] = describe_error(exc)
    try:
        acts = np.asarray(ev.activations(ctx.layer))
        rules = ctx.results.get("rules", {})
        atoms = rules.get("result", {}).get("atom_filters", []) if rules.get("status") == "ok" else []
        units = list(atoms[:cfg.top_units]) or [int(k) for k in np.argsort(-acts.var(0))[:cfg.top_units]]
        rows = at.receptive_fields(zm, ds, acts, ctx.layer, units, out / "units", batch_size=cfg.batch_size)
        result["units"] = {"layer": ctx.layer, "chosen_by": "rule atoms" if atoms else "activation variance",
                           "rows": [{**r, "path": ctx.rel(r["path"])} for r in rows]}
    except Exception as exc:  # noqa: BLE001
        result["errors"]["units"] = describe_error(exc)
    if len(result["errors"]) == 3:
        raise InspectnetError("every attribution picture failed: " + "; ".join(result["errors"].values()))
    return result


def blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
    """The attribution pictures, with what failed.

    Args:
        doc: the card document.
        r: this stage's result.

    Returns:
        The section's blocks.
    """
    blocks: list[Block] = [Figure(a["path"], f"{a['name']}: label {a['label_name']}, predicted {a['prediction_name']} "
                                             f"(input | Integrated Gradients | Grad-CAM {a['gradcam_layer']})")
                           for a in r.get("inputs", [])]
    blocks += [Figure(c["path"], _feature_map_caption(c)) for c in r.get("classes", [])]
    units = r.get("units") or {}
    if units.get("rows"):
        empty = sum(u.get("empty_tiles", 0) for u in units["rows"])
        blocks.append(Figure(units["rows"][0]["path"], f"receptive fields of {units['layer']} units "
                                                       f"({units['chosen_by']}): top images per unit, "
                                                       "pixels above the unit's top-1 % threshold T_k highlighted"
                                                       + (f"; {empty} tiles have no pixel above T_k (the unit's "
                                                          "activation there is high on average but spread thinly)"
                                                          if empty else "")))
    blocks += [Failure(err, what=f"{part} pictures failed") for part, err in r.get("errors", {}).items()]
    return blocks


def _feature_map_caption(c: dict[str, Any]) -> str:
    """Which features, at what resolution, and why a map is blank."""
    text = f"class {c['class_name']}: maps of features {c['features']}"
    if "map_size" in c:
        (h, w), (ih, iw) = c["map_size"], c["input_size"]
        text += (f"; each map is {h}×{w} cells, shown as blocks over the {ih}×{iw} input (no smoothing), "
                 "its colour bar in the feature's own units")
    if c.get("zero_features"):
        text += f"; features {c['zero_features']} are 0 everywhere on this image (blank, not missing)"
    return text


STAGE = Stage("attributions", "Attributions and receptive fields", run, blocks=blocks,
              params=lambda c: {"n": c.attribution_images, "steps": c.ig_steps, "units": c.top_units},
              needs=("probe",), uses=("decomposition", "rules"))
