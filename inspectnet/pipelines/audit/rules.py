"""The rules stage: decision-tree rules over the analysed layer's filters."""

from __future__ import annotations

from typing import Any

from inspectnet.pipelines.audit.context import AuditContext

TOP_RULES = 10


def stage_rules(ctx: AuditContext) -> dict[str, Any]:
    """A readable tree (the smallest depth within a margin of the best held-out fidelity), its top
    rules by support and the size–fidelity curve; the full pruned tree is written as a download."""
    from inspectnet.analysis.rules.tree import READABLE_MARGIN, extract_rules, plot_curve, write_rules

    train, ev = ctx.records()
    seed, folder = ctx.config.seed, ctx.out / "rules"
    rs, model = extract_rules(train, ctx.layer, ev, readable_margin=READABLE_MARGIN, seed=seed)
    paths = write_rules(rs, model, folder)
    full, full_model = extract_rules(train, ctx.layer, ev, seed=seed)
    full_paths = write_rules(full, full_model, folder / "full_tree", plot_depth=None)
    curve = plot_curve(rs.selection, folder / "fidelity_curve.png")
    keep = ("layer", "evaluated_on", "extracted_accuracy", "fidelity", "train_fidelity", "model_accuracy", "atoms",
            "atom_filters", "rules", "avg_depth", "max_depth", "num_filters", "n_train", "n_eval")
    d = rs.to_dict()
    if ev is not train:  # named relative to the folder, like every path in the card (valid when it moves)
        d["evaluated_on"] = f"eval record {ctx.rel(ev.root)}"
    top = [{k: r[k] for k in ("text", "class", "support", "confidence", "eval_support", "eval_confidence")}
           for r in rs.rule_list[:TOP_RULES]]
    return {**{k: d[k] for k in keep}, "top_rules": top, "rules_path": ctx.rel(paths["text"]),
            "classes": sorted({r["class"] for r in rs.rule_list}),
            "selection": {k: v for k, v in rs.selection.items() if k != "method"},
            "full_tree": {"rules": full.rules, "atoms": full.atoms, "max_depth": full.max_depth,
                          "avg_depth": full.avg_depth, "fidelity": full.fidelity,
                          "extracted_accuracy": full.extracted_accuracy, "path": ctx.rel(full_paths["text"])},
            "figures": [{"path": ctx.rel(curve), "caption": f"size–fidelity trade-off of the rules on {ctx.layer}"},
                        {"path": ctx.rel(paths["png"]), "caption": f"the readable tree on {ctx.layer} (top levels)"}]}

