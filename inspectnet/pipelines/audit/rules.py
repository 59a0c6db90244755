"""The rules stage: decision-tree rules over the analysed layer's filters."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypedDict

from inspectnet.core.tables import format_percent, format_value
from inspectnet.pipelines.audit.context import AuditContext
from inspectnet.pipelines.audit.stage import Stage
from inspectnet.reports.blocks import Block, Download, Paragraph, Preformatted, Table
from inspectnet.reports.card.fields import MAX_CLASS_NAMES, class_label, counted

TOP_RULES = 10


class RulesResult(TypedDict):
    """The rules stage's result in card.json: the readable tree, its top rules, the selection curve, the full tree."""

    layer: str
    evaluated_on: str
    extracted_accuracy: float
    fidelity: float
    train_fidelity: float
    model_accuracy: float
    atoms: int
    atom_filters: list[int]
    rules: int
    avg_depth: float
    max_depth: int
    num_filters: int
    n_train: int
    n_eval: int
    top_rules: list[dict[str, Any]]
    rules_path: str
    classes: list[int]
    selection: dict[str, Any]
    full_tree: dict[str, Any]
    figures: list[dict[str, str]]


def run(ctx: AuditContext) -> RulesResult:
    """A readable tree, its top rules by support and the size–fidelity curve.

    The readable tree is the smallest depth within a margin of the best held-out fidelity; the full
    pruned tree is written as a download.

    Args:
        ctx: the audit's context (model, config, data, output folder, earlier stages' results).

    Returns:
        The stage's result, as card.json stores it.
    """
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


def blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
    """The readable tree's selection, its top rules and the downloads.

    Args:
        doc: the card document.
        r: this stage's result.

    Returns:
        The section's blocks.
    """
    if "selection" not in r:  # a version-1 card: one pruned tree
        return [Paragraph(f"{r['rules']} rules over {r['atoms']} atoms (of {r['num_filters']} filters of {r['layer']}), "
                          f"average depth {format_value(r['avg_depth'], 2)}, fidelity {format_percent(r['fidelity'])}."),
                Preformatted("\n".join(r.get("rules_text", [])))]
    sel, full, n = r["selection"], r["full_tree"], r["n_eval"]
    classes = r.get("classes") or []
    blocks: list[Block] = [
        Paragraph(f"A decision tree over binarised filters of {r['layer']} (a filter is an atom, active above μ + σ), "
                  f"fitted to the model's own predictions on {r['n_train']:,} images. The readable tree is the "
                  f"smallest depth, of {min(x['depth'] for x in sel['curve'] if x['depth'])}–"
                  f"{max(x['depth'] for x in sel['curve'] if x['depth'])}, whose fidelity on {sel['n_val']:,} of those "
                  f"images, held out while the curve's trees are fitted on the other {sel.get('n_fit', '')} (not "
                  f"the evaluation data), is within {100 * sel['margin']:.0f} percentage points of the "
                  f"best ({format_percent(sel['best_val_fidelity'])})"
                  + (f": depth {sel['max_depth']}." if sel.get("within_margin", True) else
                     f". No depth up to {max(x['depth'] for x in sel['curve'] if x['depth'])} is, so it is the most "
                     f"faithful of them: depth {sel['max_depth']}, below the unlimited tree by "
                     f"{100 * (sel['best_val_fidelity'] - _curve_at(sel, sel['max_depth'])):.1f} points.")),
        Paragraph(f"Readable tree: {r['rules']} rules over {r['atoms']} atoms (of {r['num_filters']} filters), average "
                  f"depth {format_value(r['avg_depth'], 2)}; on the evaluation data fidelity {counted(r['fidelity'], n)}, "
                  f"accuracy against the labels {counted(r['extracted_accuracy'], n)}."
                  + (f" It names {len(classes)} classes: "
                     f"{', '.join(class_label(doc, c) for c in classes[:MAX_CLASS_NAMES])}." if classes else "")),
        Table(["depth limit", "rules (leaves, unpruned)", f"fidelity on the {sel['n_val']:,} held out"],
              [[x["depth"] or f"no limit ({x['tree_depth']})", x["leaves"], format_percent(x["val_fidelity"])]
               for x in sel["curve"]]),
        Paragraph(f"Top {len(r['top_rules'])} rules of the readable tree by support (images of the fitting data that "
                  "reach the rule; confidence = share of them the model gives the rule's class):"),
        Table(["rule", "support", "confidence", f"eval support (of {n:,})", "eval confidence"],
              [[t["text"], t["support"], format_percent(t["confidence"]), t["eval_support"],
                format_percent(t["eval_confidence"])] for t in r["top_rules"]]),
        Paragraph(f"The pruned tree without a depth limit (cost-complexity pruning, fitted on all {r['n_train']:,} "
                  f"fitting images, unlike the curve's unpruned trees) has {full['rules']} rules over {full['atoms']} "
                  f"atoms, depth {full['max_depth']} (average {format_value(full['avg_depth'], 1)}), fidelity "
                  f"{counted(full['fidelity'], n)} on the evaluation data"
                  + (": larger than the readable tree, it is a download only." if full["rules"] > r["rules"] else
                     f"; pruning left it no larger than the readable tree ({r['rules']} rules)."))]
    for path, text in ((full["path"], "full tree: every rule (text)"), (r.get("rules_path"), "readable tree: every rule")):
        if path and _relative(path):
            blocks.append(Download(path, text))
    return blocks


def _curve_at(sel: dict[str, Any], depth: int) -> float:
    return next(x["val_fidelity"] for x in sel["curve"] if x["depth"] == depth)


def _relative(path: str) -> bool:
    """A plain relative path inside the card's folder (no scheme, no absolute path, no ``..``)."""
    p = Path(path)
    return ":" not in path and not p.is_absolute() and ".." not in p.parts


STAGE = Stage("rules", "Rules extracted from the model's filters", run, blocks=blocks,
              params=lambda c: {"seed": c.seed, "format": 3}, needs=("probe",))
