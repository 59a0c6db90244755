"""Interpretability model cards: ``card.json`` (source of truth) rendered to ``README.md`` and ``card.html``.

``card.json`` follows a versioned schema (``schema`` = ``inspectnet-model-card``, ``schema_version``)
holding the model's identity, the data, the audit parameters, one section per audit stage
(``status`` ok/failed, ``error``, ``result``), timings and how to reproduce it. Figures are PNG files
inside the audit folder referenced by relative paths; the Markdown links them (Hugging Face shows
them from the repository) and the HTML embeds them as data URIs, so ``card.html`` is one file.

Every user-provided string (class names, file names, data specs, errors) is escaped: HTML
metacharacters always, Markdown metacharacters in the README, JSON quoting in its YAML header.

>>> doc = load_card("audit")          # doctest: +SKIP
>>> write_card(doc, "audit")          # re-render README.md and card.html from card.json   # doctest: +SKIP
"""

import base64
import dataclasses
import datetime
import html
import json
import re
from pathlib import Path
from typing import Any

from inspectnet.core.errors import InspectnetError
from inspectnet.core.storage import atomic_write_json, atomic_write_text, read_json
from inspectnet.reports import html as rh

CARD_SCHEMA = "inspectnet-model-card"
CARD_SCHEMA_VERSION = 1
TITLES = {"probe": "Evaluation data and accuracy", "decomposition": "Influential features and decomposed head",
          "rules": "Rules extracted from the model's filters", "sparsity": "Activation sparsity",
          "linear_probes": "Linear probes across depth", "attributions": "Attributions and receptive fields",
          "dissection": "Concept detectors (network dissection)", "export": "Export (ONNX) parity and speed"}


# ---------------------------------------------------------------- building and storing
def build_card(zm: Any, config: Any, results: dict[str, dict[str, Any]], *, fingerprint: str,
               total_seconds: float) -> dict[str, Any]:
    """The card document for an audit (see the module doc for its layout)."""
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
        "reproduce": {"command": config.command, "versions": installed_versions()},
    }


def installed_versions() -> dict[str, str]:
    """Versions of the libraries the audit used, read from package metadata (importing sklearn alone
    would take seconds: a fully cached audit must stay near free)."""
    import importlib.metadata as md_
    import platform

    out = {"python": platform.python_version()}
    for name in ("inspectnet", "torch", "torchvision", "timm", "numpy", "scikit-learn", "captum", "onnx",
                 "onnxruntime"):
        try:
            out[name] = md_.version(name)
        except md_.PackageNotFoundError:
            continue
    return out


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
    return {"json": atomic_write_json(folder / "card.json", doc),
            "markdown": atomic_write_text(folder / "README.md", render_markdown(doc)),
            "html": atomic_write_text(folder / "card.html", render_html(doc, folder))}


def rerender(folder: str | Path) -> dict[str, Path]:
    """``inspectnet card DIR``: re-render README.md and card.html from card.json."""
    return write_card(load_card(folder), folder)


# ---------------------------------------------------------------- shared content
def _f(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _name(doc: dict[str, Any], c: int) -> str:
    names = doc["model"]["class_names"]
    return names[c] if 0 <= c < len(names) else str(c)


def _ok(doc: dict[str, Any], name: str) -> dict[str, Any] | None:
    sec = doc["sections"].get(name)
    return sec["result"] if sec and sec.get("status") == "ok" else None


def headline(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs of the headline numbers (shared by Markdown and HTML)."""
    rows = []
    probe, dec, rules = _ok(doc, "probe"), _ok(doc, "decomposition"), _ok(doc, "rules")
    if probe:
        rows.append(("accuracy on " + probe["eval"]["data"] + (" (in-sample)" if probe["eval"]["in_sample"] else ""),
                     _f(probe["accuracy"])))
    if dec:
        rows += [("decomposed-head accuracy A_d (k1=%d, k2=%d)" % (dec["k1"], dec["k2"]), _f(dec["accuracy_decomposed"])),
                 ("rA = A_d / A_f", _f(dec["rA"])),
                 ("features used by some class (union)", f"{dec['union_size']} / {dec['feature_dim']}"),
                 ("head MACs full -> decomposed", f"{dec['head_macs_full']} -> {dec['head_macs_decomposed']}")]
        if "accuracy_retrained" in dec:
            rows.append((f"decomposed head retrained {dec['retrain_epochs']} epochs", _f(dec["accuracy_retrained"])))
    if rules:
        rows += [(f"rule fidelity ({rules['layer']})", _f(rules["fidelity"])),
                 ("rules / atoms", f"{rules['rules']} / {rules['atoms']}")]
    return rows


# ---------------------------------------------------------------- Markdown
_MD_META = re.compile(r"([\\`*_{}\[\]#|~])")


def md(text: Any) -> str:
    """Escape text for Markdown: HTML entities first (raw HTML renders on Hugging Face), then Markdown syntax.

    >>> md("<script>*x*|")
    '&lt;script&gt;\\\\*x\\\\*\\\\|'
    """
    return _MD_META.sub(r"\\\1", html.escape(str(text), quote=False)).replace("\n", " ")


def _md_table(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(md(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(md(_f(c)) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def _yaml(v: Any) -> str:
    """A YAML flow scalar: JSON strings and numbers are valid YAML and carry their own escaping
    (markup characters become \\u escapes, so no renderer ever sees a raw tag)."""
    text = json.dumps(v, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _md_code(text: str) -> str:
    """A preformatted block as escaped HTML (a Markdown fence would show entities literally)."""
    return f"<pre><code>{html.escape(text, quote=False)}</code></pre>\n"


def front_matter(doc: dict[str, Any]) -> str:
    """Hugging Face card metadata: library_name, tags, base_model (when known), model-index metrics."""
    m = doc["model"]
    lines = ["---", f"library_name: {_yaml('timm' if m['source'] == 'timm' else 'pytorch')}",
             "tags:", "- image-classification", "- interpretability", "- inspectnet", "- model-card"]
    if m.get("base") and re.fullmatch(r"[\w.-]+/[\w.-]+", str(m["base"])):
        lines.append(f"base_model: {_yaml(m['base'])}")
    metrics = []
    probe, dec, rules = _ok(doc, "probe"), _ok(doc, "decomposition"), _ok(doc, "rules")
    if probe and probe.get("accuracy") is not None:
        metrics.append(("accuracy", "accuracy", probe["accuracy"]))
    if dec:
        metrics.append(("accuracy", "decomposed head accuracy", dec["accuracy_decomposed"]))
    if rules:
        metrics.append(("fidelity", "rule fidelity", rules["fidelity"]))
    if metrics:
        lines += ["model-index:", f"- name: {_yaml(m['spec'])}", "  results:",
                  "  - task:", "      type: image-classification",
                  "    dataset:", f"      name: {_yaml(doc['data']['eval'])}", f"      type: {_yaml(doc['data']['eval'])}",
                  "    metrics:"]
        for kind, name, value in metrics:
            lines += [f"    - type: {_yaml(kind)}", f"      name: {_yaml(name)}", f"      value: {_yaml(round(value, 6))}"]
    lines.append("---")
    return "\n".join(lines) + "\n"


def _md_failed(sec: dict[str, Any]) -> str:
    return f"**This section failed:** {md(sec.get('error', 'unknown error'))}\n"


def _md_fig(path: str, caption: str) -> str:
    return f"![{md(caption)}]({path})\n"


def render_markdown(doc: dict[str, Any]) -> str:
    """README.md: YAML front matter + Mitchell et al. sections + a Model Examination section."""
    m, d = doc["model"], doc["data"]
    out = [front_matter(doc), f"# Interpretability card: {md(m['spec'])}\n",
           f"Generated by `inspectnet audit` on {md(doc['generated'])}. `card.json` is the source of truth; "
           f"`card.html` is the self-contained rendering with all pictures.\n",
           "## Model details\n",
           _md_table(["field", "value"], [["model", m["spec"]], ["base", m.get("base") or "n/a"],
                                          ["classes", m["num_classes"]], ["input", m["input_size"]],
                                          ["head", m["head"]], ["weights fingerprint", m["fingerprint"]],
                                          ["modifications", ", ".join(m["modifications"]) or "none"]]),
           "Class names: " + ", ".join(md(c) for c in m["class_names"][:50])
           + (" …" if len(m["class_names"]) > 50 else "") + "\n",
           "## Intended use\n",
           "Image classification over the classes above. This card documents what the model relies on; "
           "it is an inspection report, not a certification of fitness for any use.\n",
           "## Evaluation data\n",
           f"Fitted on `{md(d['train'])}` (limit {md(d['limit'])}), evaluated on `{md(d['eval'])}`"
           + (" — **in-sample**: no separate evaluation data was given." if d["in_sample"] else ".") + "\n",
           "## Quantitative analyses\n"]
    rows = headline(doc)
    out.append(_md_table(["metric", "value"], [list(r) for r in rows]) if rows else "No headline numbers.\n")
    out += _md_sections(doc)
    out += ["## Caveats\n", "\n".join(f"- {md(c)}" for c in caveats(doc)) + "\n",
            "## How to reproduce\n", _md_code(doc["reproduce"]["command"]),
            "Versions: " + ", ".join(f"{md(k)} {md(v)}" for k, v in doc["reproduce"]["versions"].items()) + "\n"]
    return "\n".join(out)


def _md_sections(doc: dict[str, Any]) -> list[str]:
    out = ["## Model examination\n"]
    for name, sec in doc["sections"].items():
        if name == "probe":
            continue
        out.append(f"### {md(TITLES.get(name, name))}\n")
        if sec["status"] != "ok":
            out.append(_md_failed(sec))
            continue
        r = sec["result"]
        if name == "decomposition":
            rows = [[f"{_name(doc, p['class'])}", ", ".join(map(str, p["features"])),
                     ", ".join(_f(v, 3) for v in (p["mean_contribution"] or [])), p["accuracy_full"],
                     p["accuracy_decomposed"]] for p in r["per_class"]]
            out.append(_md_table(["class", "influential features S_c", "mean contribution W·f", "acc. full",
                                  "acc. decomposed"], rows))
            na = r["noise_ablation"]
            out.append(f"Noise ablation: influential features replaced by N(0,1) → accuracy {_f(na['influential'])}; "
                       f"as many non-influential ones → {_f(na['non_influential'])}.\n")
        elif name == "rules":
            out.append(f"{r['rules']} rules over {r['atoms']} atoms (of {r['num_filters']} filters of "
                       f"`{md(r['layer'])}`), average depth {_f(r['avg_depth'], 2)}, fidelity {_f(r['fidelity'])}, "
                       f"extracted accuracy {_f(r['extracted_accuracy'])}.\n")
            out.append(_md_code("\n".join(r["rules_text"][:20])))
        elif name == "sparsity":
            keys = ["hoyer", "lifetime_kurtosis", "population_kurtosis", "treves_rolls_population",
                    "treves_rolls_lifetime", "activity_sparseness"]
            out.append(_md_table(["layer", *keys], [[row["layer"], *[row[k] for k in keys]] for row in r["rows"]]))
        elif name == "linear_probes":
            out.append(_md_table(["layer", "dim", "train acc.", "test acc."],
                                 [[x["layer"], x["dim"], x["train_accuracy"], x["test_accuracy"]] for x in r["rows"]]))
        elif name == "attributions":
            for a in r.get("inputs", []):
                out.append(_md_fig(a["path"], f"{a['name']}: label {a['label_name']}, predicted "
                                              f"{a['prediction_name']} (IG, Grad-CAM)"))
            for c in r.get("classes", []):
                out.append(_md_fig(c["path"], f"class {c['class_name']}: maps of features {c['features']}"))
            if "units" in r and r["units"]["rows"]:
                out.append(_md_fig(r["units"]["rows"][0]["path"],
                                   f"receptive fields of {r['units']['layer']} units ({r['units']['chosen_by']})"))
            for part, err in r.get("errors", {}).items():
                out.append(f"**{md(part)} pictures failed:** {md(err)}\n")
        elif name == "dissection":
            out.append(_md_table(["layer", "units", "detectors", "unique concepts"],
                                 [[k, v["num_units"], v["detectors"], v["unique_detectors"]]
                                  for k, v in r["layers"].items()]))
        elif name == "export":
            out.append(f"ONNX of the {md(r.get('model', 'model'))} ({md(r['exporter'])} exporter, opset {r['opset']}, "
                       f"{r['size_bytes']} bytes), verified against PyTorch:\n")
            out.append(_md_table(["metric", "value"], export_rows(r)))
        for fig in r.get("figures", []) if isinstance(r, dict) else []:
            out.append(_md_fig(fig["path"], fig["caption"]))
    return out


def export_rows(r: dict[str, Any]) -> list[list[Any]]:
    """Parity and latency of an export section as (metric, value) rows."""
    par = r.get("parity", {})
    rows: list[list[Any]] = [["top-1 agreement ONNX Runtime vs PyTorch", par.get("top1_agreement")],
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
    if doc["data"].get("limit"):
        out.append(f"Only the first {doc['data']['limit']} samples were used (--limit).")
    failed = [n for n, s in doc["sections"].items() if s["status"] != "ok"]
    if failed:
        out.append("Failed sections: " + ", ".join(failed) + " (see each section for why).")
    out.append("Attributions and receptive fields show a handful of images; they illustrate, they do not prove.")
    return out


# ---------------------------------------------------------------- HTML
_EXTRA_CSS = "<style>.failed{color:#a00;font-weight:bold}figure{display:inline-block;margin:4px}" \
             "figcaption{font-size:12px;max-width:420px}nav a{margin-right:8px}</style>"


def _img_file(root: Path, rel: str, caption: str) -> str:
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()) or not path.exists():  # card.json names files inside DIR only
        return f'<p class="failed">picture missing: {rh.esc(rel)}</p>'
    uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="{uri}" alt="{rh.esc(caption)}" title="{rh.esc(caption)}">'
            f"<figcaption>{rh.esc(caption)}</figcaption></figure>")


def render_html(doc: dict[str, Any], root: str | Path) -> str:
    """card.html: one self-contained page (PNGs from ``root`` embedded, every caller string escaped)."""
    root = Path(root)
    m = doc["model"]
    nav = "<nav>" + "".join(f'<a href="#sec-{rh.esc(n)}">{rh.esc(TITLES.get(n, n))}</a>' for n in doc["sections"]) \
        + "</nav>"
    body = [_EXTRA_CSS, nav, rh.heading("Model details"),
            rh.table(["field", "value"], [["model", m["spec"]], ["base", m.get("base") or "n/a"],
                                          ["classes", m["num_classes"]], ["input", str(m["input_size"])],
                                          ["weights fingerprint", m["fingerprint"]],
                                          ["class names", ", ".join(m["class_names"][:100])]]),
            rh.heading("Evaluation data"),
            rh.paragraph(f"Fitted on {doc['data']['train']} (limit {doc['data']['limit']}), evaluated on "
                         f"{doc['data']['eval']}" + (" (in-sample)." if doc["data"]["in_sample"] else ".")),
            rh.heading("Quantitative analyses"), rh.table(["metric", "value"], [list(r) for r in headline(doc)])]
    for name, sec in doc["sections"].items():
        body.append(f'<h2 id="sec-{rh.esc(name)}">{rh.esc(TITLES.get(name, name))}</h2>')
        body.append(rh.paragraph(f"status: {sec['status']}" + (" (cached)" if sec.get("cached") else "")
                                 + f", {sec.get('seconds', 0.0):.2f} s"))
        if sec["status"] != "ok":
            body.append(f'<p class="failed">This section failed: {rh.esc(sec.get("error", "unknown error"))}</p>')
            continue
        body.append(_html_section(doc, name, sec["result"], root))
    body += [rh.heading("Caveats"), "<ul>" + "".join(f"<li>{rh.esc(c)}</li>" for c in caveats(doc)) + "</ul>",
             rh.heading("How to reproduce"), f"<pre>{rh.esc(doc['reproduce']['command'])}</pre>",
             rh.table(["library", "version"], [[k, v] for k, v in doc["reproduce"]["versions"].items()])]
    return rh.page(f"Interpretability card: {m['spec']}", body,
                   intro=f"Generated by inspectnet audit on {doc['generated']}; card.json is the source of truth.")


def _html_section(doc: dict[str, Any], name: str, r: dict[str, Any], root: Path) -> str:
    parts: list[str] = []
    if name == "probe":
        parts.append(rh.table(["split", "data", "samples"], [["fit", r["train"]["data"], r["train"]["samples"]],
                                                             ["eval", r["eval"]["data"], r["eval"]["samples"]]]))
        parts.append(rh.paragraph("probed layers: " + ", ".join(r["layers"])))
    elif name == "decomposition":
        pics = {c["class"]: c for c in (_ok(doc, "attributions") or {}).get("classes", [])}
        parts.append(rh.table(["metric", "value"], [
            ["A_f", r["accuracy_full"]], ["A_d", r["accuracy_decomposed"]], ["rA", r["rA"]],
            ["agreement", r["agreement"]], ["union", f"{r['union_size']} / {r['feature_dim']}"],
            ["head MACs", f"{r['head_macs_full']} -> {r['head_macs_decomposed']}"],
            ["noise on influential", r["noise_ablation"]["influential"]],
            ["noise on non-influential", r["noise_ablation"]["non_influential"]],
            *([["retrained", r["accuracy_retrained"]]] if "accuracy_retrained" in r else [])]))
        parts.append("<p>" + " ".join(f'<a href="#class-{p["class"]}">{rh.esc(_name(doc, p["class"]))}</a>'
                                      for p in r["per_class"]) + "</p>")
        for p in r["per_class"]:
            c = p["class"]
            parts.append(f'<h3 id="class-{c}">class {c}: {rh.esc(_name(doc, c))}</h3>')
            contrib = p["mean_contribution"] or [None] * len(p["features"])
            parts.append(rh.table(["feature", "frequency in top-k1", "mean contribution W·f"],
                                  [[j, fr, v if v is not None else "n/a"]
                                   for j, fr, v in zip(p["features"], p["frequencies"], contrib)], sortable=True))
            if c in pics:
                parts.append(_img_file(root, pics[c]["path"], f"{_name(doc, c)}: maps of features "
                                                               f"{pics[c]['features']}"))
    elif name == "rules":
        parts.append(rh.paragraph(f"{r['rules']} rules over {r['atoms']} atoms of {r['num_filters']} filters of "
                                  f"{r['layer']}; average depth {r['avg_depth']:.2f}; fidelity {r['fidelity']:.4f}; "
                                  f"extracted accuracy {_f(r['extracted_accuracy'])}."))
        parts.append("<pre>" + rh.esc("\n".join(r["rules_text"])) + "</pre>")
    elif name == "sparsity":
        keys = ["hoyer", "lifetime_kurtosis", "population_kurtosis", "treves_rolls_population",
                "treves_rolls_lifetime", "activity_sparseness"]
        parts.append(rh.table(["layer", *keys], [[x["layer"], *[_f(x[k]) for k in keys]] for x in r["rows"]],
                              sortable=True))
    elif name == "linear_probes":
        parts.append(rh.table(["layer", "dim", "train acc.", "test acc."],
                              [[x["layer"], x["dim"], x["train_accuracy"], x["test_accuracy"]] for x in r["rows"]]))
    elif name == "attributions":
        for a in r.get("inputs", []):
            parts.append(_img_file(root, a["path"], f"{a['name']}: label {a['label_name']}, predicted "
                                                    f"{a['prediction_name']} (input | Integrated Gradients | "
                                                    f"Grad-CAM {a['gradcam_layer']})"))
        if r.get("units", {}).get("rows"):
            u = r["units"]
            parts.append(rh.heading(f"Receptive fields of {u['layer']} units ({u['chosen_by']})", 3))
            parts.append(_img_file(root, u["rows"][0]["path"], "top images per unit, thresholded map highlighted"))
        for part, err in r.get("errors", {}).items():
            parts.append(f'<p class="failed">{rh.esc(part)} pictures failed: {rh.esc(err)}</p>')
    elif name == "dissection":
        parts.append(rh.table(["layer", "units", "detectors", "unique concepts", "concepts"],
                              [[k, v["num_units"], v["detectors"], v["unique_detectors"],
                                ", ".join(v["detector_concepts"])] for k, v in r["layers"].items()]))
    elif name == "export":
        parts.append(rh.table(["field", "value"], [["exporter", r["exporter"]], ["opset", r["opset"]],
                                                   ["size (bytes)", r["size_bytes"]], *export_rows(r)]))
    for fig in r.get("figures", []):
        parts.append(_img_file(root, fig["path"], fig["caption"]))
    return "".join(parts)


def figure_paths(doc: dict[str, Any]) -> list[str]:
    """Every figure path (relative to the audit folder) that the card refers to."""
    found: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            p = v.get("path")
            if isinstance(p, str) and p.endswith(".png"):
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
    import shutil

    folder, dest = Path(folder), Path(dest)
    doc = load_card(folder)
    for rel in figure_paths(doc):
        src = (folder / rel).resolve()
        if src.is_relative_to(folder.resolve()) and src.exists():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / rel)
    dest.mkdir(parents=True, exist_ok=True)
    return write_card(doc, dest)
