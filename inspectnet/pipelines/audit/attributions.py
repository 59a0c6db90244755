"""The attributions stage: input attributions, influential-feature maps and receptive fields."""

from __future__ import annotations

from typing import Any

import numpy as np

from inspectnet.core.errors import InspectnetError
from inspectnet.pipelines.audit.context import AuditContext, describe_error


def stage_attributions(ctx: AuditContext) -> dict[str, Any]:
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

