"""The audit's card: each stage renders its own section (:attr:`Stage.blocks <inspectnet.pipelines.audit.stage.Stage>`).

The card's sections so follow the stage list. These are :mod:`inspectnet.reports.card`'s writers
with the stages' sections bound.

>>> doc = load_card("audit")          # doctest: +SKIP
>>> write_card(doc, "audit")          # re-render README.md and card.html from card.json   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inspectnet.pipelines.audit.stages import STAGES
from inspectnet.reports import card as card_doc
from inspectnet.reports.card import load_card
from inspectnet.reports.card.sections import SectionBlocks

__all__ = ["card_sections", "load_card", "publish", "render_html", "render_markdown", "rerender", "write_card"]


def card_sections() -> dict[str, SectionBlocks]:
    """Stage name -> how that stage renders its section of the card, in the stages' order.

    Returns:
        The renderers.

    Examples:
        >>> list(card_sections())[:3]
        ['probe', 'decomposition', 'rules']
    """
    return {stage.name: stage.blocks for stage in STAGES}


def write_card(doc: dict[str, Any], folder: str | Path) -> dict[str, Path]:
    """Write ``card.json``, ``README.md`` and ``card.html`` into ``folder`` (figures are read from it).

    Args:
        doc: the card document.
        folder: the audit folder.

    Returns:
        The files written.
    """
    return card_doc.write_card(doc, folder, card_sections())


def rerender(folder: str | Path) -> dict[str, Path]:
    """``inspectnet card DIR``: re-render README.md and card.html from card.json.

    Args:
        folder: the audit folder.

    Returns:
        The files written.
    """
    return card_doc.rerender(folder, card_sections())


def publish(folder: str | Path, dest: str | Path) -> dict[str, Path]:
    """Copy a card (card.json + its figures) out of an audit folder without the caches, and render it there.

    Args:
        folder: the audit folder.
        dest: the folder to copy to.

    Returns:
        The files written in ``dest``.
    """
    return card_doc.publish(folder, dest, card_sections())


def render_markdown(doc: dict[str, Any]) -> str:
    """The card's README.md text.

    Args:
        doc: the card document.

    Returns:
        The Markdown.
    """
    return card_doc.render_markdown(doc, card_sections())


def render_html(doc: dict[str, Any], root: str | Path) -> str:
    """The card's self-contained HTML page (PNGs under ``root`` embedded).

    Args:
        doc: the card document.
        root: the folder the figures are read from.

    Returns:
        The HTML.
    """
    return card_doc.render_html(doc, root, card_sections())
