"""Interpretability model cards: ``card.json`` (source of truth) rendered to ``README.md`` and ``card.html``.

``card.json`` follows a versioned schema (``schema`` = ``inspectnet-model-card``, ``schema_version``)
holding the model's identity, the data, the audit parameters, one section per audit stage
(``status`` ok/failed, ``error``, ``result``), timings and how to reproduce it. Figures are PNG files
inside the audit folder referenced by relative paths; the Markdown links them (Hugging Face shows
them from the repository) and the HTML embeds them as data URIs, so ``card.html`` is one file.

Both renderings come from one view (:func:`card_view`: sections of paragraphs, tables, figures,
preformatted text and failure reasons) through two templates, ``templates/card.md.j2`` and
``templates/card.html.j2``, so they carry the same content. Every user-provided string (class
names, file names, data specs, errors) is escaped: HTML metacharacters always (autoescape), Markdown
metacharacters in the README (the ``md`` filter), JSON quoting in its YAML header.

>>> doc = load_card("audit")          # doctest: +SKIP
>>> write_card(doc, "audit")          # re-render README.md and card.html from card.json   # doctest: +SKIP
"""

import base64
import dataclasses
import datetime
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inspectnet.core.errors import InspectnetError
from inspectnet.core.results import library_versions
from inspectnet.core.storage import atomic_write_bytes, atomic_write_json, atomic_write_text, output_dir, read_json
from inspectnet.core.tables import escape_markdown as md  # noqa: F401 - the README's escaping rule, public here
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
from inspectnet.reports.render import render_html_template, render_markdown_template

CARD_SCHEMA = "inspectnet-model-card"
CARD_SCHEMA_VERSION = 1


# ---------------------------------------------------------------- building and storing
def build_card(zm: Any, config: Any, results: dict[str, dict[str, Any]], *, fingerprint: str,
               total_seconds: float, made_by: list[str] = ()) -> dict[str, Any]:
    """The card document for an audit (see the module doc for its layout); ``made_by`` are the
    commands that made the model (see :mod:`inspectnet.models.provenance`)."""
    sections = {}
    for name, entry in results.items():
        sections[name] = {k: entry[k] for k in ("title", "status", "error", "result", "seconds", "cached")
                         if k in entry}
    run = sum(s.get("seconds", 0.0) for s in sections.values() if not s.get("cached"))
    cached = sum(s.get("seconds", 0.0) for s in sections.values() if s.get("cached"))
    cfg = dataclasses.asdict(config)
    return {
        "schema": CARD_SCHEMA, "schema_version": CARD_SCHEMA_VERSION,
        "generated": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": {"spec": zm.spec, "source": zm.source, "arch": zm.arch, "base": zm.base,
                  "num_classes": zm.num_classes, "in_chans": zm.in_chans,
                  "input_size": list(zm.data_config.get("input_size", [])), "head": zm.head_name,
                  "fingerprint": fingerprint, "class_names": list(zm.class_names),
                  "modifications": [m.get("kind") for m in zm.modifications]},
        "data": {"train": config.data, "eval": config.eval_data or config.data, "limit": config.limit,
                 "in_sample": config.eval_data is None},
        "config": {k: v for k, v in cfg.items() if k != "command"},
        "sections": sections,
        "timing": {"total_seconds": round(total_seconds, 3), "stages_run_seconds": round(run, 3),
                   "stages_cached_seconds": round(cached, 3)},
        "reproduce": {"command": config.command, "model_made_by": list(made_by),
                      "versions": library_versions(("captum", "onnx", "onnxruntime"))},
    }


def check_card(doc: Any, where: str = "card.json") -> dict[str, Any]:
    """Validate the schema name, version and required keys; returns ``doc``."""
    if not isinstance(doc, dict) or doc.get("schema") != CARD_SCHEMA:
        raise InspectnetError(f"{where} is not an inspectnet model card (schema {CARD_SCHEMA!r} expected)")
    version = doc.get("schema_version")
    if not isinstance(version, int) or version > CARD_SCHEMA_VERSION:
        raise InspectnetError(f"{where} has schema_version {version!r}; this inspectnet reads up to "
                              f"{CARD_SCHEMA_VERSION} (upgrade inspectnet)")
    missing = [k for k in ("model", "data", "sections", "timing", "reproduce") if k not in doc]
    if missing:
        raise InspectnetError(f"{where} lacks {', '.join(missing)}")
    return doc


def load_card(folder: str | Path) -> dict[str, Any]:
    """Read and validate ``folder/card.json``."""
    path = Path(folder) / "card.json"
    if not path.exists():
        raise InspectnetError(f"{folder} holds no card.json; run `inspectnet audit MODEL DATA --out {folder}` first")
    return check_card(read_json(path, what="model card"), str(path))


def write_card(doc: dict[str, Any], folder: str | Path) -> dict[str, Path]:
    """Write ``card.json``, ``README.md`` and ``card.html`` into ``folder`` (figures are read from it)."""
    folder = Path(folder)
    check_card(doc)
    markdown, html = render_markdown(doc), render_html(doc, folder)  # both render before anything is written
    return {"json": atomic_write_json(folder / "card.json", doc),
            "markdown": atomic_write_text(folder / "README.md", markdown),
            "html": atomic_write_text(folder / "card.html", html)}


def rerender(folder: str | Path) -> dict[str, Path]:
    """``inspectnet card DIR``: re-render README.md and card.html from card.json."""
    return _write_loaded(load_card(folder), folder, folder)


def _write_loaded(doc: dict[str, Any], source: str | Path, dest: str | Path) -> dict[str, Path]:
    """:func:`write_card` for a card read from disk: a hand-damaged one is an error naming the file."""
    try:
        return write_card(doc, dest)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise InspectnetError(f"{Path(source) / 'card.json'} is damaged ({type(exc).__name__}: {exc}); re-run the "
                              f"audit that wrote it") from None


def check_copy_target(dest: str | Path) -> Path:
    """Refuse a ``--copy-to`` folder that exists and holds anything but an earlier copy of a card."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and not (dest / "card.json").is_file())):
        raise InspectnetError(f"--copy-to {dest} exists and holds no card; choose an empty or new folder (a "
                              f"card is copied only over an earlier copy of a card)")
    return dest


# ---------------------------------------------------------------- the view both templates render
INTENDED_USE = ("Image classification over the classes above. This card documents what the model relies on; "
                "it is an inspection report, not a certification of fitness for any use.")
# card.json field names of a sparsity row, in the card's column order
SPARSITY_KEYS = ("hoyer", "lifetime_kurtosis", "population_kurtosis", "treves_rolls_population",
                 "treves_rolls_lifetime", "activity_sparseness")
MAX_CLASS_NAMES = 50


@dataclasses.dataclass(frozen=True)
class CardView:
    """What ``card.md.j2`` and ``card.html.j2`` render: the title, an intro line, the Hugging Face
    front matter (Markdown only) and the sections."""

    title: str
    intro: str
    meta: dict[str, Any]
    sections: list[Section]


def card_view(doc: dict[str, Any]) -> CardView:
    """The card's content as sections of blocks (Mitchell et al. sections, then one per audit stage).

    >>> view = card_view(load_card("audit"))    # doctest: +SKIP
    >>> [s.title for s in view.sections][:2]    # doctest: +SKIP
    ['Model details', 'Intended use']
    """
    m = doc["model"]
    rows = headline(doc)
    return CardView(
        title=f"Interpretability card: {m['spec']}",
        intro=f"Generated by inspectnet audit on {doc['generated']}. card.json is the source of truth; "
              "card.html is the self-contained rendering with all pictures.",
        meta=front_matter_fields(doc),
        sections=[Section("Model details", _model_blocks(m)),
                  Section("Intended use", [Paragraph(INTENDED_USE)]),
                  Section("Evaluation data", [Paragraph(_data_text(doc)), *_label_blocks(doc)]),
                  Section("Quantitative analyses", [Table(["metric", "value"], [list(r) for r in rows])] if rows
                          else [Paragraph("No headline numbers.")]),
                  Section("Model examination", []),
                  *[_stage_section(doc, name, sec) for name, sec in doc["sections"].items()],
                  Section("Caveats", [BulletList(caveats(doc))]),
                  Section("How to reproduce", _reproduce_blocks(doc["reproduce"]))])


def _reproduce_blocks(rep: dict[str, Any]) -> list[Block]:
    made = rep.get("model_made_by") or []
    blocks: list[Block] = [Paragraph("How the model was made:"), Preformatted("\n".join(made))] if made else \
        [Paragraph("The model was not made by inspectnet train/finetune (a zoo model, or a folder without "
                   "made_by.json).")]
    return [*blocks, Paragraph("The audit:"), Preformatted(rep["command"]),
            Table(["library", "version"], [[k, v] for k, v in rep["versions"].items()])]


def section_title(name: str, sec: dict[str, Any]) -> str:
    """The stage's own title (written by the audit), else its humanised name (older card.json files).

    >>> section_title("linear_probes", {})
    'Linear probes'
    """
    return sec.get("title") or name.replace("_", " ").capitalize()


def _model_blocks(m: dict[str, Any]) -> list[Block]:
    names = m["class_names"]
    shown = ", ".join(names[:MAX_CLASS_NAMES]) + (" …" if len(names) > MAX_CLASS_NAMES else "")
    return [Table(["field", "value"], [["model", m["spec"]], ["base", m.get("base") or "n/a"],
                                       ["classes", m["num_classes"]], ["input", m["input_size"]],
                                       ["head", m["head"]], ["weights fingerprint", m["fingerprint"]],
                                       ["modifications", ", ".join(m["modifications"]) or "none"]]),
            Paragraph(f"Class names: {shown}")]


def _data_text(doc: dict[str, Any]) -> str:
    """Which samples were fitted and evaluated: how many of how many, and how they were chosen."""
    d, probe = doc["data"], _ok(doc, "probe")
    if not probe or "available" not in probe["train"]:
        return (f"Fitted on {d['train']} (limit {d['limit']}), evaluated on {d['eval']}"
                + (" — in-sample: no separate evaluation data was given." if d["in_sample"] else "."))
    ev = probe["eval"]
    text = f"Fitted on {sample_text(probe['train'], '--limit')}"
    if ev["in_sample"]:
        return text + " and evaluated on the same samples — in-sample: no separate evaluation data was given."
    return text + f"; evaluated on {sample_text(ev, '--eval-limit')}."


def sample_text(split: dict[str, Any], option: str) -> str:
    """``300 of the 1,000 samples of mnist5k:test, an evenly spread subset (--eval-limit 300)``.

    >>> sample_text({"data": "digits:test", "samples": 50, "available": 50, "limit": 80}, "--limit")
    'all 50 samples of digits:test (--limit 80 exceeds the 50 available)'
    """
    n, total, limit = split["samples"], split["available"], split["limit"]
    if n >= total:
        why = f" (--limit {limit} exceeds the {total:,} available)".replace("--limit", option) \
            if limit is not None and limit > total else ""
        return f"all {total:,} samples of {split['data']}{why}"
    return f"{n:,} of the {total:,} samples of {split['data']}, an evenly spread subset ({option} {limit})"


def _counted(fraction: float | None, n: int | None) -> str:
    """``94.3 % (n = 300)``."""
    return format_percent(fraction) + (f" (n = {n:,})" if n is not None else "")


def _label_blocks(doc: dict[str, Any]) -> list[Block]:
    """How the data's classes were mapped onto the model's, and which classes have data."""
    probe = _ok(doc, "probe")
    if not probe or "classes_present" not in probe["train"]:
        return []
    blocks: list[Block] = []
    num = probe["num_classes"]
    if probe.get("index_order"):
        blocks.append(Paragraph(f"The model's class names were placeholders (class_0 …): the data's {num} classes "
                                "were taken in index order (folder k is class k) and their names adopted."))
    for split in ("train", "eval"):
        mapping = probe[split].get("label_mapping")
        if not mapping or probe.get("index_order") or (split == "eval" and mapping == probe["train"]["label_mapping"]):
            continue
        blocks += [Paragraph(f"Classes of {probe[split]['data']} mapped onto the model's {num} classes:"),
                   Table(["data class", "model class", "index", "matched by"],
                         [[r["data"], r["model_class"], r["index"], r["via"]] for r in mapping["classes"]])]
    fit, ev = probe["train"]["classes_present"], probe["eval"]["classes_present"]
    present = sorted(set(fit) | set(ev))
    text = (f"Classes with data: {len(present)} of the model's {num}"
            + (f" ({', '.join(_name(doc, c) for c in present[:MAX_CLASS_NAMES])}"
               + (" …" if len(present) > MAX_CLASS_NAMES else "") + ")" if len(present) < num else "")
            + f"; {len(fit)} in the fitting data, {len(ev)} in the evaluation data. Accuracy is top-1 over all "
              f"{num} classes; per-class analyses cover the classes with data.")
    return [*blocks, Paragraph(text)]


def _stage_section(doc: dict[str, Any], name: str, sec: dict[str, Any]) -> Section:
    blocks: list[Block] = [Paragraph(f"status: {sec['status']}" + (" (cached)" if sec.get("cached") else "")
                                     + f", {sec.get('seconds', 0.0):.2f} s")]
    if sec["status"] != "ok":
        blocks.append(Failure(sec.get("error", "unknown error")))
    else:
        r = sec["result"]
        blocks += _STAGE_BLOCKS.get(name, _no_blocks)(doc, r)
        blocks += [Figure(f["path"], f["caption"]) for f in r.get("figures", [])]
    return Section(section_title(name, sec), blocks, level=3, anchor=f"sec-{name}")


def _name(doc: dict[str, Any], c: int) -> str:
    names = doc["model"]["class_names"]
    return names[c] if 0 <= c < len(names) else str(c)


def _ok(doc: dict[str, Any], name: str) -> dict[str, Any] | None:
    sec = doc["sections"].get(name)
    return sec["result"] if sec and sec.get("status") == "ok" else None


def headline(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs of the headline numbers ("Quantitative analyses")."""
    rows = []
    probe, dec, rules = _ok(doc, "probe"), _ok(doc, "decomposition"), _ok(doc, "rules")
    n = probe["eval"]["samples"] if probe else None
    if probe:
        rows.append(("accuracy A_f on " + probe["eval"]["data"] + (" (in-sample)" if probe["eval"]["in_sample"] else ""),
                     _counted(probe["accuracy"], n)))
    if dec:
        rows += [("decomposed-head accuracy A_d (k1=%d, k2=%d)" % (dec["k1"], dec["k2"]),
                  _counted(dec["accuracy_decomposed"], n)),
                 ("rA = A_d / A_f", _ratio(dec)),
                 ("features used by some class (union)", f"{dec['union_size']} / {dec['feature_dim']}"),
                 ("head MACs full -> decomposed", f"{dec['head_macs_full']} -> {dec['head_macs_decomposed']}")]
        if "accuracy_retrained" in dec:
            rows.append((f"decomposed head retrained {dec['retrain_epochs']} epochs",
                         _counted(dec["accuracy_retrained"], n)))
    if rules:
        rows += [(f"rule fidelity, readable tree ({rules['layer']})", _counted(rules["fidelity"], rules.get("n_eval"))),
                 ("rules / atoms (readable tree)", f"{rules['rules']} / {rules['atoms']}")]
    for label, _kind, value in faithfulness_metrics(doc):
        rows.append((label, format_value(value)))
    return rows


def faithfulness_metrics(doc: dict[str, Any]) -> list[tuple[str, str, float]]:
    """(label, metric type, value): deletion/insertion AUC of the full model's class evidence and of its random
    control (the headline and the Hugging Face ``model-index``)."""
    r = _ok(doc, "explanations")
    if not r:
        return []
    rows = [x for x in r["rows"] if x["form"] == r["forms"][0]["name"] and x["status"] == "ok"]
    evidence = next((x for x in rows if x["method"] == "evidence" and x["deletion_auc"] is not None), None)
    if evidence is None:
        return []
    size = evidence["map_size"]
    control = next((x for x in rows if x["method"] == "random" and x["map_size"] == size), None)
    out = []
    for who, row in (("class-evidence map", evidence), ("random control", control)):
        for kind in ("deletion_auc", "insertion_auc"):
            if row is not None and row[kind] is not None:
                out.append((f"{kind.split('_')[0]} AUC of the {who} ({r['faithfulness']['baseline']}, "
                            f"{'lower' if kind == 'deletion_auc' else 'higher'} is better)", kind, row[kind]))
    return out


def front_matter_fields(doc: dict[str, Any]) -> dict[str, Any]:
    """Hugging Face card metadata: library_name, base_model (a hub id only), model-index metrics."""
    m = doc["model"]
    probe, dec, rules = _ok(doc, "probe"), _ok(doc, "decomposition"), _ok(doc, "rules")
    metrics = []
    if probe and probe.get("accuracy") is not None:
        metrics.append(("accuracy", "accuracy", probe["accuracy"]))
    if dec:
        metrics.append(("accuracy", "decomposed head accuracy", dec["accuracy_decomposed"]))
    if rules:
        metrics.append(("fidelity", "rule fidelity", rules["fidelity"]))
    metrics += [(kind, label, value) for label, kind, value in faithfulness_metrics(doc)]
    base = m.get("base")
    return {"library_name": "timm" if m["source"] == "timm" else "pytorch",
            "base_model": base if base and re.fullmatch(r"[\w.-]+/[\w.-]+", str(base)) else None,
            "name": m["spec"], "dataset": doc["data"]["eval"],
            "metrics": [(kind, name, round(value, 6)) for kind, name, value in metrics]}


# ---------------------------------------------------------------- one function per audit stage
def _probe_blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
    return [Table(["split", "data", "samples"], [["fit", r["train"]["data"], r["train"]["samples"]],
                                                 ["eval", r["eval"]["data"], r["eval"]["samples"]]]),
            Paragraph("probed layers: " + ", ".join(r["layers"]))]


def _ratio(r: dict[str, Any]) -> str:
    """rA, or why it is undefined."""
    return format_value(r["rA"]) if r.get("rA") is not None else f"undefined ({r.get('rA_undefined', 'n/a')})"


def _decomposition_blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
    n = (_ok(doc, "probe") or {}).get("eval", {}).get("samples")
    blocks: list[Block] = [Paragraph(
        f"A_f, A_d, rA, the union and the head MACs are under Quantitative analyses. Top-1 agreement of the "
        f"decomposed head with the full one: {_counted(r['agreement'], n)}.")]
    if r.get("model_choice"):
        blocks.append(Paragraph(f"Decomposed head after retraining: {_counted(r.get('accuracy_retrained'), n)}; "
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
                f"{format_value(among['accuracy_decomposed'])}, rA {_ratio(among)}."))
    per_class = [[_name(doc, p["class"]), ", ".join(map(str, p["features"])) or "none (no fitting data)",
                  _listed(p["frequencies"]), _listed(p["mean_contribution"] or []), format_percent(p["accuracy_full"]),
                  format_percent(p["accuracy_decomposed"])] for p in r["per_class"]]
    return [*blocks,
            *_noise_blocks(r["noise_ablation"], n),
            Paragraph(f"Per class: the {len(per_class)} classes with data."),
            Table(["class", "influential features S_c", "frequency in top-k1", "mean contribution W·f", "acc. full",
                   "acc. decomposed"], per_class, sortable=True)]


def _noise_blocks(na: dict[str, Any], n: int | None) -> list[Block]:
    """The noise ablation, each number labelled with the head it was measured on."""
    rows = [["the original model's full head", _counted(na["influential"], n), _counted(na["non_influential"], n)]]
    if "decomposed_head" in na:
        rows.append(["the decomposed head", _counted(na["decomposed_head"]["influential"], n),
                     _counted(na["decomposed_head"]["non_influential"], n)])
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
                  f"depth {format_value(r['avg_depth'], 2)}; on the evaluation data fidelity {_counted(r['fidelity'], n)}, "
                  f"accuracy against the labels {_counted(r['extracted_accuracy'], n)}."
                  + (f" It names {len(classes)} classes: {', '.join(_name(doc, c) for c in classes[:MAX_CLASS_NAMES])}."
                     if classes else "")),
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
                  f"fidelity {_counted(full['fidelity'], n)}: too large to read, it is a download only.")]
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
                            [[m["model"], m["fingerprint"][:16], _counted(m["accuracy"], m["n"]), f"{m['parameters']:,}",
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


def caveats(doc: dict[str, Any]) -> list[str]:
    out = []
    if doc["data"]["in_sample"]:
        out.append("All numbers are in-sample (no --eval data): they overstate generalisation.")
    probe = _ok(doc, "probe")
    if probe and "available" in probe["train"]:
        subsets = [s for s in (probe["train"], probe["eval"]) if s["samples"] < s["available"]]
        if subsets:
            out.append("Evenly spread subsets were analysed (" + "; ".join(
                f"{s['samples']:,} of {s['available']:,} samples of {s['data']}" for s in subsets) + "), not the first N "
                "samples: `inspectnet run … --limit N` takes the first N, so its accuracy can differ from the card's.")
        splits = [probe["train"]] if probe["eval"]["in_sample"] else [probe["train"], probe["eval"]]
        out += [f"The limit {s['limit']} exceeds the {s['available']:,} samples of {s['data']}: all of them were used."
                for s in splits if s["limit"] is not None and s["limit"] > s["available"]]
    elif doc["data"].get("limit"):
        out.append(f"At most {doc['data']['limit']} samples were used (--limit).")
    if probe and "classes_present" in probe["train"]:
        present = len(set(probe["train"]["classes_present"]) | set(probe["eval"]["classes_present"]))
        if present < probe["num_classes"]:
            out.append(f"The data cover {present} of the model's {probe['num_classes']} classes: per-class findings "
                       f"say nothing about the others.")
    failed = [n for n, s in doc["sections"].items() if s["status"] != "ok"]
    if failed:
        out.append("Failed sections: " + ", ".join(failed) + " (see each section for why).")
    out.append("Attributions and receptive fields show a handful of images; they illustrate, they do not prove.")
    return out



# ---------------------------------------------------------------- rendering
def render_markdown(doc: dict[str, Any]) -> str:
    """README.md: YAML front matter, then the card's sections (``templates/card.md.j2``)."""
    return render_markdown_template("card.md.j2", card=card_view(doc))


def render_html(doc: dict[str, Any], root: str | Path) -> str:
    """card.html: one self-contained page (``templates/card.html.j2``; PNGs from ``root`` embedded)."""
    view = card_view(doc)
    return render_html_template("card.html.j2", card=view, title=view.title, intro=view.intro,
                                embed=_png_embedder(Path(root)))


def _png_embedder(root: Path) -> Callable[[str], str | None]:
    """path -> data URI of that PNG, or None for a missing file or one outside ``root``
    (card.json names files inside the audit folder only)."""
    base = root.resolve()

    def embed(rel: str) -> str | None:
        path = (root / rel).resolve()
        if not path.is_relative_to(base) or not path.is_file():
            return None
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")

    return embed


def figure_paths(doc: dict[str, Any]) -> list[str]:
    """Every figure (PNG) and text download (the rule lists) that the card refers to, relative to
    the audit folder."""
    found: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for key in ("path", "rules_path"):
                p = v.get(key)
                if isinstance(p, str) and p.endswith((".png", ".txt")):
                    found.append(p)
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(doc["sections"])
    return sorted(set(found))


def publish(folder: str | Path, dest: str | Path) -> dict[str, Path]:
    """Copy a card (card.json + its figures) out of an audit folder without the caches, and render it there.

    >>> publish("runs/audit_mnist", "model_cards/mnist_resnet18")   # doctest: +SKIP
    """
    folder, dest = Path(folder), check_copy_target(dest)
    doc = load_card(folder)
    for rel in figure_paths(doc):
        src = (folder / rel).resolve()
        if src.is_relative_to(folder.resolve()) and src.exists():
            atomic_write_bytes(dest / rel, src.read_bytes())
    output_dir(dest)
    return _write_loaded(doc, folder, dest)
