"""The card document: building it from an audit's results, validating, storing, re-rendering and publishing it."""

import dataclasses
import datetime
from pathlib import Path
from typing import Any

from inspectnet.core.errors import InspectnetError
from inspectnet.core.results import library_versions
from inspectnet.core.storage import atomic_write_bytes, atomic_write_json, atomic_write_text, output_dir, read_json
from inspectnet.reports.card.view import render_html, render_markdown

CARD_SCHEMA = "inspectnet-model-card"


CARD_SCHEMA_VERSION = 1


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
    # card.json last, the old one gone first: a full disk never leaves a card.json beside renderings of another
    (folder / "card.json").unlink(missing_ok=True)
    paths = {"markdown": atomic_write_text(folder / "README.md", markdown),
             "html": atomic_write_text(folder / "card.html", html)}
    return {"json": atomic_write_json(folder / "card.json", doc), **paths}


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
