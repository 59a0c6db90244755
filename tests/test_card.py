"""Model card rendering: schema checks, escaping of every user string, YAML front matter, re-rendering."""

import base64
import io
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from inspectnet.core.errors import InspectnetError
from inspectnet.reports.card import (
    CARD_SCHEMA,
    CARD_SCHEMA_VERSION,
    check_card,
    load_card,
    md,
    render_markdown,
    rerender,
    write_card,
)

EVIL = '<script>alert("x")</script>'


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(path)
    return path


def _card(evil=EVIL):
    """A hand-built card whose every user-provided string carries markup."""
    return {
        "schema": CARD_SCHEMA, "schema_version": CARD_SCHEMA_VERSION, "generated": "2026-01-01T00:00:00Z",
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
    assert len(uris) == 2 and all(u.startswith("data:image/png;base64,") for u in uris)
    decoded = Image.open(io.BytesIO(base64.b64decode(uris[0].split(",", 1)[1])))
    assert decoded.size == (4, 4)
    assert "This section failed: InspectnetError: bad &lt;script&gt;" in page
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
