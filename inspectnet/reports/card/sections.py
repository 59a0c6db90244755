"""The blocks of each audit stage's section of the card, from that stage's result in card.json."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from inspectnet.core.tables import format_percent, format_value
from inspectnet.reports.blocks import (
    Block,
    BulletList,
    Download,
    Failure,
    Figure,
    Paragraph,
    Preformatted,
    Section,
    Table,
)
from inspectnet.reports.card.fields import MAX_CLASS_NAMES, class_label, counted, ok_result, ratio_text

# card.json field names of a sparsity row, in the card's column order
SPARSITY_KEYS = ("hoyer", "lifetime_kurtosis", "population_kurtosis", "treves_rolls_population",
                 "treves_rolls_lifetime", "activity_sparseness")


def section_title(name: str, sec: dict[str, Any]) -> str:
    """The stage's own title (written by the audit), else its humanised name (older card.json files).

    >>> section_title("linear_probes", {})
    'Linear probes'
    """
    return sec.get("title") or name.replace("_", " ").capitalize()


def stage_section(doc: dict[str, Any], name: str, sec: dict[str, Any]) -> Section:
    blocks: list[Block] = [Paragraph(f"status: {sec['status']}" + (" (cached)" if sec.get("cached") else "")
                                     + f", {sec.get('seconds', 0.0):.2f} s")]
    if sec["status"] != "ok":
        blocks.append(Failure(sec.get("error", "unknown error")))
    else:
        r = sec["result"]
        blocks += _STAGE_BLOCKS.get(name, _no_blocks)(doc, r)
        blocks += [Figure(f["path"], f["caption"]) for f in r.get("figures", [])]
    return Section(section_title(name, sec), blocks, level=3, anchor=f"sec-{name}")


def _probe_blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
    return [Table(["split", "data", "samples"], [["fit", r["train"]["data"], r["train"]["samples"]],
                                                 ["eval", r["eval"]["data"], r["eval"]["samples"]]]),
            Paragraph("probed layers: " + ", ".join(r["layers"]))]


def _decomposition_blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
    n = (ok_result(doc, "probe") or {}).get("eval", {}).get("samples")
    blocks: list[Block] = [Paragraph(
        f"A_f, A_d, rA, the union and the head MACs are under Quantitative analyses. Top-1 agreement of the "
        f"decomposed head with the full one: {counted(r['agreement'], n)}.")]
    if r.get("model_choice"):
        blocks.append(Paragraph(f"Decomposed head after retraining: {counted(r.get('accuracy_retrained'), n)}; "
                                f"{r['model_choice']}."))
    if r.get("dense_classes"):
        blocks.append(Paragraph(
            f"{r['num_classes'] - r['dense_classes']} of the model's {r['num_classes']} classes had fitting data and "
            f"were decomposed; the other {r['dense_classes']} keep their dense rows (nothing says which of their "
            f"features matter), which the head MACs count and which win most top-1 decisions over all classes."))
        among = r.get("among_fitted_classes") or {}
        if among.get("samples"):
            blocks.append(Paragraph(
                f"Among the {among['num_classes']} decomposed classes only (top-1 among them, on their "
                f"{among['samples']} eval samples): A_f {format_value(among['accuracy_full'])}, A_d "
                f"{format_value(among['accuracy_decomposed'])}, rA {ratio_text(among)}."))
    per_class = [[class_label(doc, p["class"]), ", ".join(map(str, p["features"])) or "none (no fitting data)",
                  _listed(p["frequencies"]), _listed(p["mean_contribution"] or []), format_percent(p["accuracy_full"]),
                  format_percent(p["accuracy_decomposed"])] for p in r["per_class"]]
    return [*blocks,
            *_noise_blocks(r["noise_ablation"], n),
            Paragraph(f"Per class: the {len(per_class)} classes with data."),
            Table(["class", "influential features S_c", "frequency in top-k1", "mean contribution W·f", "acc. full",
                   "acc. decomposed"], per_class, sortable=True)]


def _noise_blocks(na: dict[str, Any], n: int | None) -> list[Block]:
    """The noise ablation, each number labelled with the head it was measured on."""
    rows = [["the original model's full head", counted(na["influential"], n), counted(na["non_influential"], n)]]
    if "decomposed_head" in na:
        rows.append(["the decomposed head", counted(na["decomposed_head"]["influential"], n),
                     counted(na["decomposed_head"]["non_influential"], n)])
    count = na.get("num_influential")
    return [Paragraph("Noise ablation: accuracy when the influential features (∪ S_c"
                      + (f", {count}" if count is not None else "") + ") or as many randomly chosen "
                      "non-influential ones are replaced by N(0, 1) noise" + (f" ({na['note']})" if na.get("note") else "")
                      + "."),
            Table(["head", "noise on influential", "noise on non-influential"], rows)]


def _listed(values: list[float]) -> str:
    return ", ".join(format_value(v, 3) for v in values)


def _rules_blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
    if "selection" not in r:  # card.json of an older audit: one pruned tree
        return [Paragraph(f"{r['rules']} rules over {r['atoms']} atoms (of {r['num_filters']} filters of {r['layer']}), "
                          f"average depth {format_value(r['avg_depth'], 2)}, fidelity {format_percent(r['fidelity'])}."),
                Preformatted("\n".join(r.get("rules_text", [])))]
    sel, full, n = r["selection"], r["full_tree"], r["n_eval"]
    classes = r.get("classes") or []
    blocks: list[Block] = [
        Paragraph(f"A decision tree over binarised filters of {r['layer']} (a filter is an atom, active above μ + σ), "
                  f"fitted to the model's own predictions on {r['n_train']:,} images. The readable tree is the "
                  f"smallest depth, of {min(x['depth'] for x in sel['curve'] if x['depth'])}–"
                  f"{max(x['depth'] for x in sel['curve'] if x['depth'])}, whose fidelity on a held-out "
                  f"{sel['n_val']:,} of those images is within {100 * sel['margin']:.0f} percentage points of the "
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
        Table(["depth", "rules", "held-out fidelity"],
              [[x["depth"] or f"no limit ({x['tree_depth']})", x["leaves"], format_percent(x["val_fidelity"])]
               for x in sel["curve"]]),
        Paragraph(f"Top {len(r['top_rules'])} rules of the readable tree by support (images of the fitting data that "
                  "reach the rule; confidence = share of them the model gives the rule's class):"),
        Table(["rule", "support", "confidence", f"eval support (of {n:,})", "eval confidence"],
              [[t["text"], t["support"], format_percent(t["confidence"]), t["eval_support"],
                format_percent(t["eval_confidence"])] for t in r["top_rules"]]),
        Paragraph(f"The full tree (cost-complexity pruning, no depth limit) has {full['rules']} rules over "
                  f"{full['atoms']} atoms, depth {full['max_depth']} (average {format_value(full['avg_depth'], 1)}), "
                  f"fidelity {counted(full['fidelity'], n)}: too large to read, it is a download only.")]
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


def _sparsity_blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
    return [Table(["layer", *SPARSITY_KEYS], [[row["layer"], *[row[k] for k in SPARSITY_KEYS]] for row in r["rows"]],
                  sortable=True)]


def _linear_probe_blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
    n_train, n_eval = r.get("n_train"), r.get("n_eval")
    return [Table(["layer", "dim", "train acc." + (f" (n = {n_train:,})" if n_train else ""),
                   "test acc." + (f" (n = {n_eval:,})" if n_eval else "")],
                  [[x["layer"], x["dim"], format_percent(x["train_accuracy"]), format_percent(x["test_accuracy"])]
                   for x in r["rows"]])]


def _attribution_blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
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


ARROWS = "↓ lower is better, ↑ higher is better"


def _explanation_blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
    f = r["faithfulness"]
    blocks: list[Block] = [Paragraph(
        f"{r['images']} images of {r.get('data') or 'the evaluation data'}, each explained for the class its model form "
        f"predicts. Deletion / insertion: the pixels, most relevant first, are replaced by the {f['baseline']} baseline "
        f"(insertion: restored onto it) in {f['steps']} steps; the area under the curve of the class probability "
        f"is shown. ROAD: {', '.join(f'{int(100 * x)} %' for x in f['road_fractions'])} of the pixels removed by noisy "
        f"linear imputation, most (MoRF) or least (LeRF) relevant first; the mean probability is shown. "
        f"Every method is compared with a random map of its own resolution on the same images (paired "
        f"difference); it beats the control when both deletion and insertion are better by more than two "
        f"standard errors. {ARROWS}.")]
    ok = [x for x in r["rows"] if x["status"] == "ok"]
    blocks.append(Table(["method", "model form", "map", "deletion AUC ↓", "insertion AUC ↑", "ROAD MoRF ↓",
                         "ROAD LeRF ↑", "Δ deletion vs random", "Δ insertion vs random", "beats random",
                         "maps ranked (constant, NaN)"],
                        [[x["method"], x["form"], "x".join(map(str, x["map_size"])), x["deletion_auc"],
                          x["insertion_auc"], x["road_morf"], x["road_lerf"], *_versus(x.get("vs_random")),
                          f"{x['evaluated']} of {x['images']} ({x['constant_maps']}, {x['nan_maps']})"] for x in ok],
                        sortable=True))
    blocks.append(Paragraph("Explanation quality by model form: what decomposing, slimming and int8 export cost in "
                            "faithfulness of the class-evidence map, beside accuracy."))
    blocks.append(Table(["model form", "engine", "accuracy", "top-1 agreement with full", "evidence deletion AUC ↓",
                         "evidence insertion AUC ↑", "evidence ROAD MoRF ↓", "random deletion AUC",
                         "random insertion AUC", "evidence beats random", "evidence sanity check"],
                        [_form_row(r, form) for form in r["forms"]]))
    if r.get("sanity"):
        blocks.append(Paragraph("Sanity check (Adebayo et al. 2018): the model is randomised block by block from the "
                                "head down and each method's maps are compared with the trained model's by the "
                                "Spearman rank correlation ρ (mean over images); a method passes when |ρ| after the "
                                "whole cascade is below the threshold. The random control does not depend on the "
                                f"model and must fail. Images: {_sanity_images(r)}."))
        blocks.append(Table(["method", "model form", "ρ after the head", "ρ after the whole cascade",
                             "mean |ρ| at the end", "threshold", "passes"],
                            [[m, form, v["spearman"][0], v["spearman"][-1], v["abs_spearman_final"], s["threshold"],
                              _verdict(v["passes"])] for form, s in r["sanity"].items() for m, v in s["methods"].items()]))
    cost = r.get("cost", {})
    if cost.get("forward_passes_per_image_per_method") is not None:
        blocks.append(Paragraph(f"Cost of the metrics: {format_value(cost['forward_passes_per_image_per_method'], 1)} "
                                f"forward passes per image per method (counted; planned {cost['planned']})."))
    notes = [f"{x['name']}: {x['error']}" for x in r["forms"] if x["status"] != "ok"]
    notes += [f"{x['method']} on {x['form']}: {x['error']}" for x in r["rows"] if x["status"] != "ok"]
    if notes:
        blocks.append(BulletList(notes))
    return blocks


def _versus(v: dict[str, Any] | None) -> list[Any]:
    if not v:
        return ["n/a", "n/a", "n/a"]
    return [_plus_minus(v["deletion_auc"], v["deletion_auc_se"]), _plus_minus(v["insertion_auc"], v["insertion_auc_se"]),
            "yes" if v["beats_control"] else "no"]


def _plus_minus(value: float | None, se: float | None) -> str:
    return "n/a" if value is None else format_value(value, 3) + (f" ± {format_value(se, 3)}" if se is not None else "")


def _verdict(passes: bool | None) -> str:
    return {True: "pass", False: "fail", None: "undetermined (maps cannot be ranked)"}[passes]


def _sanity_images(r: dict[str, Any]) -> str:
    """How many of the explained images the cascade ran on (the same for every form)."""
    n = next(iter(r["sanity"].values()))["images"]
    return f"all {n} explained images" if n == r["images"] else f"{n} of the {r['images']} explained images, evenly spread"


def _form_row(r: dict[str, Any], form: dict[str, Any]) -> list[Any]:
    if form["status"] != "ok":
        return [form["name"], "—", "not evaluated", "", "", "", "", "", "", "", ""]
    rows = {x["method"] if x["method"] != "random" else "random " + "x".join(map(str, x["map_size"])): x
            for x in r["rows"] if x["form"] == form["name"] and x["status"] == "ok"}
    ev = rows.get("evidence", {})
    rand = rows.get("random " + "x".join(map(str, ev.get("map_size", []))), {})
    sanity = r.get("sanity", {}).get(form["name"], {}).get("methods", {}).get("evidence")
    return [form["name"], form["engine"], form["accuracy"], form["agreement_with_full"], ev.get("deletion_auc"),
            ev.get("insertion_auc"), ev.get("road_morf"), rand.get("deletion_auc"), rand.get("insertion_auc"),
            _versus(ev.get("vs_random"))[2], _verdict(sanity["passes"]) if sanity else "n/a"]


def _dissection_blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
    return [Table(["layer", "units", "detectors", "unique concepts", "concepts"],
                  [[k, v["num_units"], v["detectors"], v["unique_detectors"], ", ".join(v["detector_concepts"])]
                   for k, v in r["layers"].items()])]


def _export_blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = [Paragraph(f"Exported: the {r.get('model', 'model')} ({r['exporter']} exporter, opset "
                                     f"{r['opset']}, {r['path']}, {r['size_bytes'] / 1e6:.2f} MB).")]
    if r.get("dense_instead"):
        blocks.append(Paragraph(f"Not the decomposed model: {r['dense_instead']}."))
    if r.get("model_choice"):
        blocks.append(Paragraph(f"Which decomposed head: {r['model_choice']}."))
    slim = r.get("slimming") or {}
    if "error" in slim:
        blocks.append(Paragraph(f"Not slimmed: {slim['error']}."))
    elif slim:
        blocks.append(Paragraph(f"Slimmed exactly ({slim['method']}): {slim['kept_channels']} of {slim['feature_dim']} "
                                f"penultimate channels kept, logits within {slim['logits_max_abs_diff']:.1e} of the "
                                f"decomposed model's, MACs {slim['macs_before']:,} -> {slim['macs_after']:,}."))
    if r.get("models"):
        blocks.append(Table(["model", "weights fingerprint", "accuracy", "parameters", "weights (float32)"],
                            [[m["model"], m["fingerprint"][:16], counted(m["accuracy"], m["n"]), f"{m['parameters']:,}",
                              f"{m['weights_bytes'] / 1e6:.2f} MB"] for m in r["models"]]))
    return [*blocks, Paragraph("The ONNX file verified against PyTorch:"), Table(["metric", "value"], export_rows(r))]


def _no_blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
    return []


_STAGE_BLOCKS: dict[str, Callable[[dict[str, Any], dict[str, Any]], list[Block]]] = {
    "probe": _probe_blocks, "decomposition": _decomposition_blocks, "rules": _rules_blocks,
    "sparsity": _sparsity_blocks, "linear_probes": _linear_probe_blocks, "attributions": _attribution_blocks,
    "explanations": _explanation_blocks, "dissection": _dissection_blocks, "export": _export_blocks}


def export_rows(r: dict[str, Any]) -> list[list[Any]]:
    """Parity and latency of an export section as (metric, value) rows."""
    par = r.get("parity", {})
    agree = par.get("top1_agreement")
    rows: list[list[Any]] = [["top-1 agreement ONNX Runtime vs PyTorch", None if agree is None else format_percent(agree)],
                             ["max abs. logit difference", f"{par['max_abs_diff']:.2e}" if "max_abs_diff" in par else None]]
    lat = r.get("latency_ms", {})
    for batch in sorted({b for v in lat.values() if isinstance(v, dict) for b in v}, key=lambda b: int(b)):
        cells = {k: v[batch] for k, v in lat.items() if isinstance(v, dict) and batch in v}
        rows.append([f"latency ms at batch {batch}", ", ".join(f"{k} {v:.3g}" for k, v in cells.items())])
        if "torch_eager" in cells and cells.get("ort_fp32"):
            rows.append([f"speed-up ORT fp32 / torch at batch {batch}", f"{cells['torch_eager'] / cells['ort_fp32']:.2f}x"])
    return rows
