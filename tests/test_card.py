"""Model card rendering: schema checks, escaping of every user string, YAML front matter, re-rendering."""

import base64
import html
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from inspectnet.core.errors import InspectnetError
from inspectnet.pipelines.audit.card import card_sections, render_markdown, rerender, write_card
from inspectnet.reports.card import CARD_SCHEMA, CARD_SCHEMA_VERSION, check_card, load_card, md

ROOT = Path(__file__).resolve().parent.parent
EVIL = '<script>alert("x")</script>'


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(path)
    return path


def _card(evil=EVIL):
    """A hand-built card whose every user-provided string carries markup (version 1: no section titles, one rule tree)."""
    return {
        "schema": CARD_SCHEMA, "schema_version": 1, "generated": "2026-01-01T00:00:00Z",
        "model": {"spec": f"timm:{evil}", "source": "timm", "arch": evil, "base": None, "num_classes": 2,
                  "in_chans": 1, "input_size": [1, 16, 16], "head": "fc", "fingerprint": "abc",
                  "class_names": [evil, "b|*_c"], "modifications": []},
        "data": {"train": f"/data/{evil}", "eval": f"/data/{evil}", "limit": 8, "in_sample": True},
        "config": {},
        "sections": {
            "probe": {"status": "ok", "seconds": 1.0, "result": {
                "layers": [evil], "train": {"data": evil, "samples": 8}, "eval": {"data": evil, "samples": 8,
                                                                                  "in_sample": True},
                "accuracy": 0.5, "feature_dim": 4}},
            "rules": {"status": "ok", "seconds": 1.0, "result": {
                "layer": evil, "evaluated_on": evil, "extracted_accuracy": 0.5, "fidelity": 0.75,
                "train_fidelity": 1.0, "model_accuracy": 0.5, "atoms": 1, "atom_filters": [0], "rules": 2,
                "avg_depth": 1.0, "max_depth": 1, "num_filters": 4, "rules_text": [f"f0 → {evil}", "¬f0 → b|*_c"],
                "rules_total": 2, "figures": [{"path": "rules/tree.png", "caption": evil}]}},
            "attributions": {"status": "ok", "seconds": 1.0, "result": {
                "errors": {"classes": evil},
                "inputs": [{"index": 0, "name": f"{evil}.png", "label": 0, "label_name": evil, "prediction": 1,
                            "prediction_name": "b|*_c", "path": "attributions/inputs/attr_000.png",
                            "gradcam_layer": evil, "ig_steps": 4}]}},
            "sparsity": {"status": "failed", "seconds": 0.1, "error": f"InspectnetError: bad {evil}"},
        },
        "timing": {"total_seconds": 3.1, "stages_run_seconds": 3.1, "stages_cached_seconds": 0.0},
        "reproduce": {"command": f"inspectnet audit x '{evil}' --out d", "versions": {"torch": "2"}},
    }


@pytest.fixture
def folder(tmp_path):
    _png(tmp_path / "rules" / "tree.png")
    _png(tmp_path / "attributions" / "inputs" / "attr_000.png")
    return tmp_path


def test_html_escapes_every_user_string_and_embeds_pictures(folder):
    paths = write_card(_card(), folder)
    page = paths["html"].read_text()
    assert "<script>alert" not in page
    assert page.count("<script>") == 1  # the page's own sorting script only
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    uris = [part.split('"')[0] for part in page.split('src="')[1:]]
    # the two figures, and the first screen's picture (the explained image again)
    assert len(uris) == 3 and all(u.startswith("data:image/png;base64,") for u in uris)
    decoded = Image.open(io.BytesIO(base64.b64decode(uris[0].split(",", 1)[1])))
    assert decoded.size == (4, 4)
    # (a token holding "/" sits in a span that keeps it on one line)
    assert 'This section failed: InspectnetError: bad <span class="tok">&lt;script&gt;' in page
    assert 'id="sec-rules"' in page and 'href="#sec-rules"' in page


def test_markdown_escapes_and_front_matter_is_valid_yaml(folder):
    text = render_markdown(_card())
    assert "<script>" not in text
    assert "&lt;script&gt;alert(\"x\")&lt;/script&gt;" in text
    assert "b\\|\\*\\_c" in text  # a table cell cannot be split by a class name
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["library_name"] == "timm" and "interpretability" in meta["tags"]
    result = meta["model-index"][0]["results"][0]
    assert meta["model-index"][0]["name"] == f"timm:{EVIL}"  # JSON quoting keeps the string intact
    assert {m["name"]: m["value"] for m in result["metrics"]} == {"accuracy": 0.5, "rule fidelity": 0.75}
    for heading in ("## Model details", "## Intended use", "## Evaluation data", "## Quantitative analyses",
                    "## Model examination", "## Caveats", "## How to reproduce"):
        assert heading in text
    assert "**This section failed:**" in text
    assert "![" in text and "(rules/tree.png)" in text


def test_md_hand_cases():
    assert md("a_b") == "a\\_b"
    assert md("x|y") == "x\\|y"
    assert md("<b>&") == "&lt;b&gt;&amp;"
    assert md("[link](javascript:x)") == "\\[link\\](javascript:x)"
    assert md("two\nlines") == "two lines"


def test_schema_is_checked(folder):
    bad = {**_card(), "schema_version": CARD_SCHEMA_VERSION + 1}
    with pytest.raises(InspectnetError, match="schema_version"):
        check_card(bad)
    with pytest.raises(InspectnetError, match="not an inspectnet model card"):
        check_card({"schema": "other"})
    (folder / "card.json").write_text(json.dumps({"schema": CARD_SCHEMA, "schema_version": 1}))
    with pytest.raises(InspectnetError, match="lacks"):
        load_card(folder)
    with pytest.raises(InspectnetError, match="holds no card.json"):
        load_card(folder / "nowhere")


@pytest.mark.parametrize("version, advice", [(0, "re-run the audit"), (3, "upgrade inspectnet"), (True, "re-run the audit"),
                                             ("2", "re-run the audit")])
def test_only_the_card_versions_that_exist_are_read(version, advice):
    with pytest.raises(InspectnetError, match=f"schema_version .*reads versions 1, 2 \\({advice}"):
        check_card({**_card(), "schema_version": version})


def test_a_current_card_needs_every_section_title_and_an_older_one_falls_back_to_the_stage_name():
    doc = {**_card(), "schema_version": CARD_SCHEMA_VERSION}
    with pytest.raises(InspectnetError, match="lacks sections.probe.title, sections.rules.title"):
        check_card(doc)
    assert "### Probe\n" in render_markdown(_card())  # version 1: the humanised stage name


def test_rerender_reproduces_files_and_refuses_paths_outside(folder):
    paths = write_card(_card(), folder)
    before = {k: p.read_text() for k, p in paths.items()}
    paths["html"].unlink()
    paths["markdown"].unlink()
    again = rerender(folder)
    assert {k: p.read_text() for k, p in again.items()} == before
    doc = _card()
    doc["sections"]["rules"]["result"]["figures"] = [{"path": "../../etc/passwd", "caption": "x"}]
    page = write_card(doc, folder)["html"].read_text()
    assert "picture missing: ../../etc/passwd" in page


# ---------------------------------------------------------------- one view, two templates
def _full_card(evil=EVIL):
    """``_card`` plus every other audit stage, with markup in every name (figures only where files exist)."""
    doc = _card(evil)
    doc["model"]["modifications"] = [f"decomposed-{evil}"]
    per_class = [{"class": c, "features": [3, 1], "frequencies": [0.875, 0.5], "mean_contribution": [0.25, -1e-6],
                  "accuracy_full": 0.75, "accuracy_decomposed": 0.5} for c in range(2)]
    doc["sections"].update({
        "decomposition": {"status": "ok", "seconds": 2.0, "cached": True, "result": {
            "k1": 2, "k2": 2, "accuracy_full": 0.625, "accuracy_decomposed": 0.5, "rA": 0.8, "agreement": 0.75,
            "union_size": 2, "feature_dim": 4, "head_macs_full": 8, "head_macs_decomposed": 4,
            "noise_ablation": {"influential": 0.125, "non_influential": 0.625}, "per_class": per_class,
            "accuracy_retrained": 0.6, "retrain_epochs": 1}},
        "linear_probes": {"status": "ok", "seconds": 1.0, "result": {
            "rows": [{"layer": f"{evil}.conv_1", "dim": 4, "train_accuracy": 1.0, "test_accuracy": 0.4375}],
            "model_accuracy": 0.5}},
        "dissection": {"status": "ok", "seconds": 1.0, "result": {"layers": {evil: {
            "num_units": 4, "detectors": 1, "unique_detectors": 1, "detector_concepts": [f"{evil}|red"]}}}},
        "export": {"status": "ok", "seconds": 1.0, "result": {
            "exporter": "dynamo", "opset": 20, "size_bytes": 1234, "model": f"model {evil}",
            "path": f"export/{evil}.onnx", "model_choice": f"kept {evil}", "slimming": {"error": f"no {evil}"},
            "models": [{"model": f"dense {evil}", "fingerprint": "f" * 64, "accuracy": 0.625, "n": 8,
                        "parameters": 1000, "weights_bytes": 4000},
                       {"model": f"exported {evil}", "fingerprint": "e" * 64, "accuracy": 0.5, "n": 8,
                        "parameters": 900, "weights_bytes": 3600}],
            "parity": {"top1_agreement": 1.0, "max_abs_diff": 1.5e-7},
            "latency_ms": {"torch_eager": {"1": 4.0}, "ort_fp32": {"1": 2.0}}}},
    })
    doc["sections"]["probe"]["result"]["train"].update(available=6, limit=8)
    doc["sections"]["probe"]["result"]["eval"].update(available=6, limit=8)
    doc["sections"]["decomposition"]["result"]["model_choice"] = f"retraining lowered A_d {evil}"
    curve = [{"depth": d, "val_fidelity": 0.5 + d / 20, "leaves": 2 ** d, "tree_depth": d} for d in (2, 3)]
    doc["sections"]["rules"]["result"].update(
        n_train=8, n_eval=8, classes=[0, 1], rules_path=f"rules/{evil}.txt",
        selection={"max_depth": 2, "margin": 0.02, "best_val_fidelity": 0.65, "n_val": 2, "val_fraction": 0.25,
                   "n_fit": 6, "curve": [*curve, {"depth": None, "val_fidelity": 0.6, "leaves": 5, "tree_depth": 4}]},
        top_rules=[{"text": f"f0 → {evil}", "class": 0, "support": 5, "confidence": 0.8, "eval_support": 4,
                    "eval_confidence": 0.75}],
        full_tree={"rules": 5, "atoms": 3, "max_depth": 4, "avg_depth": 3.2, "fidelity": 0.6,
                   "extracted_accuracy": 0.5, "path": "rules/full_tree/rules.txt"})
    doc["reproduce"]["model_made_by"] = [f"inspectnet train {evil} --out m"]
    doc["sections"]["sparsity"] = {"status": "ok", "seconds": 0.5, "result": {"rows": [
        {"layer": evil, "hoyer": 0.5, "lifetime_kurtosis": 12.25, "population_kurtosis": -0.5,
         "treves_rolls_population": 0.25, "treves_rolls_lifetime": 0.125, "activity_sparseness": 2.5e-7}]}}
    return doc


def _texts(block):
    """Every piece of text a block shows, formatted as a template shows it (before escaping)."""
    from inspectnet.core.tables import format_value
    from inspectnet.reports.blocks import BulletList, Download, Failure, Figure, Paragraph, Preformatted, Table

    if isinstance(block, Table):
        return [*block.headers, *[format_value(c) for row in block.rows for c in row]]
    if isinstance(block, Figure):
        return [block.caption]
    if isinstance(block, Failure):
        return [block.what, block.reason]
    if isinstance(block, BulletList):
        return list(block.items)
    if isinstance(block, Download):
        return [block.text]
    assert isinstance(block, Paragraph | Preformatted)
    return [block.text]


def _unspanned(page):
    """The page without the spans that keep a data spec or a path on one line (layout only, no content)."""
    return re.sub(r'<span class="tok">([^<]*)</span>', r"\1", page)


def test_markdown_and_html_show_every_block_of_the_same_view(folder):
    from inspectnet.pipelines.audit.card import render_html
    from inspectnet.reports.blocks import Preformatted
    from inspectnet.reports.card import card_view

    doc = _full_card()
    view = card_view(doc, card_sections())
    page, text = _unspanned(render_html(doc, folder)), render_markdown(doc)
    titles = [s.title for s in view.sections]
    assert {"Intended use", "Decomposition", "Sparsity", "Dissection", "Export"} <= set(titles)
    checked = 0
    for section in view.sections:
        assert f"{'#' * section.level} {md(section.title)}\n" in text
        assert f">{html.escape(section.title)}</h{section.level}>" in page
        for block in section.blocks:
            for piece in _texts(block):
                as_html = html.escape(piece, quote=not isinstance(block, Preformatted))
                assert html.escape(piece, quote=True) in page or as_html in page, (section.title, piece)
                assert (html.escape(piece, quote=False) if isinstance(block, Preformatted) else md(piece)) in text, \
                    (section.title, piece)
                checked += 1
    assert checked > 100
    # the rows HTML lacked before (head, modifications) and the stage Markdown skipped (probe)
    assert "| head | fc |" in text and "<td data-v=\"head\">head</td>" in page
    assert f"decomposed-{html.escape(EVIL)}" in page and "### Probe" in text
    assert "2.5e-07" in text and "2.5e-07" in page  # a tiny value is not shown as 0.0000


def test_every_html_heading_is_a_markdown_heading(folder):
    from inspectnet.pipelines.audit.card import render_html

    doc = _full_card()
    page, text = render_html(doc, folder), render_markdown(doc)
    headings = re.findall(r"<h([23])[^>]*>(.*?)</h\1>", page)
    assert len(headings) == len(doc["sections"]) + 8  # a section per stage and eight of the card itself
    md_headings = [line for line in text.splitlines() if line.startswith("##")]
    assert md_headings == [f"{'#' * int(level)} {md(html.unescape(title))}" for level, title in headings]


def test_user_strings_with_markup_are_escaped_in_both_outputs(folder):
    from inspectnet.pipelines.audit.card import render_html

    name = "<script>x</script>|*y*"
    doc = _full_card(evil=name)
    doc["model"]["class_names"] = [name, "ok"]
    page, text = render_html(doc, folder), render_markdown(doc)
    assert "<script>x" not in page and "<script>x" not in text
    assert page.count("<script>") == 1
    assert "&lt;script&gt;x&lt;/script&gt;|*y*" in page
    assert "&lt;script&gt;x&lt;/script&gt;\\|\\*y\\*" in text
    # a `|` in a name stays inside its cell: every table line has as many unescaped pipes as its header
    for table in re.findall(r"(?:^\|.*\|\n)+", text, flags=re.M):
        widths = {len(re.findall(r"(?<!\\)\|", line)) for line in table.splitlines()}
        assert len(widths) == 1, table


def test_section_titles_come_from_card_json_with_a_fallback(folder):
    doc = _full_card()
    doc["sections"]["rules"]["title"] = "Rules <extracted> from filters"
    text = render_markdown(doc)
    assert "### Rules &lt;extracted&gt; from filters\n" in text
    assert "### Linear probes\n" in text  # an older card.json: no title, the humanised stage name


def test_figure_links_cannot_break_out_of_markdown(folder):
    doc = _card()
    doc["sections"]["rules"]["result"]["figures"] = [{"path": "a b)/x.png", "caption": "tree"}]
    assert "![tree](a%20b%29/x.png)" in render_markdown(doc)


def test_published_cards_still_render():
    """The cards under model_cards/ (card.json without section titles) render with every picture."""
    from inspectnet.pipelines.audit.card import render_html

    folders = sorted(p.parent for p in (ROOT / "model_cards").glob("*/card.json"))
    assert len(folders) >= 3
    for folder in folders:
        doc = load_card(folder)
        page, text = render_html(doc, folder), render_markdown(doc)
        assert "picture missing" not in page and page.count("data:image/png;base64,") >= 3
        title = doc["sections"]["decomposition"].get("title", "Decomposition")
        assert f"### {title}\n" in text and 'id="sec-decomposition"' in page


def test_templates_ship_in_the_built_package(tmp_path):
    """What a wheel would hold (setuptools build_py on a copy of the sources) includes the templates."""
    import shutil
    import subprocess
    import sys

    src = tmp_path / "src"
    for name in ("pyproject.toml", "README.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, src / name)
    for name in ("inspectnet", "plugins"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    res = subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build_py",
                          "--build-lib", str(tmp_path / "lib")], cwd=src, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    shipped = {p.name for p in (tmp_path / "lib" / "inspectnet" / "reports" / "templates").glob("*.j2")}
    assert shipped == {p.name for p in (ROOT / "inspectnet" / "reports" / "templates").glob("*.j2")}
    assert {"card.md.j2", "card.html.j2", "dissection.html.j2"} <= shipped
