"""The card document: building it from an audit's results, validating, storing, re-rendering and publishing it."""

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from inspectnet.core.errors import InspectnetError
from inspectnet.core.results import library_versions
from inspectnet.core.storage import atomic_write_bytes, atomic_write_json, atomic_write_text, output_dir, read_json
from inspectnet.reports.card.schema import (
    CARD_SCHEMA,
    CARD_SCHEMA_VERSION,
    READABLE_VERSIONS,
    AuditedModel,
    AuditSettings,
    CardDocument,
    CardSection,
)
from inspectnet.reports.card.sections import SectionBlocks
from inspectnet.reports.card.view import render_html, render_markdown


def build_card(zm: AuditedModel, config: AuditSettings, results: Mapping[str, Mapping[str, Any]], *,
               fingerprint: str, total_seconds: float, made_by: Sequence[str] = ()) -> CardDocument:
    """The card document for an audit (layout: :class:`~inspectnet.reports.card.schema.CardDocument`).

    Args:
        zm: the audited model (or its description).
        config: the audit's configuration (a dataclass: every field is recorded under ``config``).
        results: stage name -> its entry (status, result or error, seconds, cached), in the card's order.
        fingerprint: the model's weights fingerprint.
        total_seconds: the audit's wall time.
        made_by: the commands that made the model (see :mod:`inspectnet.models.provenance`).

    Returns:
        The card document, ready for :func:`write_card`.
    """
    sections: dict[str, CardSection] = {}
    for name, entry in results.items():
        sections[name] = CardSection(**{k: entry[k] for k in ("title", "status", "error", "result", "seconds",
                                                               "cached") if k in entry})
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
    """Validate the schema name, version and required keys; returns ``doc``.

    Args:
        doc: a parsed card.json.
        where: how to name it in a refusal.

    Returns:
        ``doc`` itself.

    Raises:
        InspectnetError: naming the first problem (not a card, a version this inspectnet does not read, a missing key).

    Examples:
        >>> try:
        ...     check_card({"schema": "inspectnet-model-card", "schema_version": 9})
        ... except InspectnetError as exc:
        ...     print(exc)
        card.json has schema_version 9; this inspectnet reads versions 1, 2 (upgrade inspectnet)
    """
    if not isinstance(doc, dict) or doc.get("schema") != CARD_SCHEMA:
        raise InspectnetError(f"{where} is not an inspectnet model card (schema {CARD_SCHEMA!r} expected)")
    version = doc.get("schema_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        newer = isinstance(version, int) and not isinstance(version, bool) and version > CARD_SCHEMA_VERSION
        raise InspectnetError(f"{where} has schema_version {version!r}; this inspectnet reads versions "
                              f"{', '.join(map(str, READABLE_VERSIONS))} "
                              + ("(upgrade inspectnet)" if newer else "(re-run the audit that wrote it)"))
    missing = [k for k in ("model", "data", "sections", "timing", "reproduce") if k not in doc]
    if version >= 2:
        missing += [f"sections.{name}.title" for name, sec in doc.get("sections", {}).items()
                    if isinstance(sec, dict) and "title" not in sec]
    if missing:
        raise InspectnetError(f"{where} lacks {', '.join(missing)}")
    return doc


def load_card(folder: str | Path) -> dict[str, Any]:
    """Read and validate ``folder/card.json``.

    Args:
        folder: an audit (or copied card) folder.

    Returns:
        The card document.

    Raises:
        InspectnetError: the folder holds no ``card.json``, or it is not a valid card.
    """
    path = Path(folder) / "card.json"
    if not path.exists():
        raise InspectnetError(f"{folder} holds no card.json; run `inspectnet audit MODEL DATA --out {folder}` first")
    return check_card(read_json(path, what="model card"), str(path))


def write_card(doc: dict[str, Any], folder: str | Path,
               sections: Mapping[str, SectionBlocks]) -> dict[str, Path]:
    """Write ``card.json``, ``README.md`` and ``card.html`` into ``folder`` (figures are read from it).

    Args:
        doc: the card document (validated first).
        folder: the audit folder.
        sections: renders each stage's section (``inspectnet.pipelines.audit.card_sections()``).

    Returns:
        The files written: ``{"json", "markdown", "html"}``.
    """
    folder = Path(folder)
    check_card(doc)
    # both render before anything is written
    markdown, html = render_markdown(doc, sections), render_html(doc, folder, sections)
    # card.json last, the old one gone first: a full disk never leaves a card.json beside renderings of another
    (folder / "card.json").unlink(missing_ok=True)
    paths = {"markdown": atomic_write_text(folder / "README.md", markdown),
             "html": atomic_write_text(folder / "card.html", html)}
    return {"json": atomic_write_json(folder / "card.json", doc), **paths}


def rerender(folder: str | Path, sections: Mapping[str, SectionBlocks]) -> dict[str, Path]:
    """``inspectnet card DIR``: re-render README.md and card.html from card.json.

    Args:
        folder: the audit folder.
        sections: renders each stage's section.

    Returns:
        The files written.
    """
    return _write_loaded(load_card(folder), folder, folder, sections)


def _write_loaded(doc: dict[str, Any], source: str | Path, dest: str | Path,
                  sections: Mapping[str, SectionBlocks]) -> dict[str, Path]:
    """:func:`write_card` for a card read from disk: a hand-damaged one is an error naming the file."""
    try:
        return write_card(doc, dest, sections)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise InspectnetError(f"{Path(source) / 'card.json'} is damaged ({type(exc).__name__}: {exc}); re-run the "
                              f"audit that wrote it") from None


def check_copy_target(dest: str | Path) -> Path:
    """Refuse a ``--copy-to`` folder that exists and holds anything but an earlier copy of a card.

    Args:
        dest: the folder.

    Returns:
        ``dest`` as a ``Path``.

    Raises:
        InspectnetError: the folder exists and holds something other than a card.
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and not (dest / "card.json").is_file())):
        raise InspectnetError(f"--copy-to {dest} exists and holds no card; choose an empty or new folder (a "
                              f"card is copied only over an earlier copy of a card)")
    return dest


def figure_paths(doc: dict[str, Any]) -> list[str]:
    """Every figure (PNG) and text download (the rule lists) that the card refers to.

    Args:
        doc: the card document.

    Returns:
        The paths relative to the audit folder, sorted, each once.
    """
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


def publish(folder: str | Path, dest: str | Path, sections: Mapping[str, SectionBlocks]) -> dict[str, Path]:
    """Copy a card (card.json + its figures) out of an audit folder without the caches, and render it there.

    Args:
        folder: the audit folder.
        dest: the folder to copy to (new, empty, or an earlier copy).
        sections: renders each stage's section.

    Returns:
        The files written in ``dest``.

    Examples:
        >>> from inspectnet.pipelines.audit import card_sections
        >>> publish("runs/audit_mnist", "model_cards/mnist_resnet18", card_sections())   # doctest: +SKIP
    """
    folder, dest = Path(folder), check_copy_target(dest)
    doc = load_card(folder)
    for rel in figure_paths(doc):
        src = (folder / rel).resolve()
        if src.is_relative_to(folder.resolve()) and src.exists():
            atomic_write_bytes(dest / rel, src.read_bytes())
    output_dir(dest)
    return _write_loaded(doc, folder, dest, sections)
