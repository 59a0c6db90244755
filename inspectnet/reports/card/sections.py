"""One audit stage's section of the card: its status, the blocks its stage renders from its result, its figures."""

from collections.abc import Callable, Mapping
from typing import Any

from inspectnet.reports.blocks import Block, Failure, Figure, Paragraph, Section

# how a stage renders its section: (the whole card document, the stage's result) -> blocks
SectionBlocks = Callable[[dict[str, Any], dict[str, Any]], list[Block]]


def section_title(name: str, sec: dict[str, Any]) -> str:
    """The stage's own title; version-1 cards may lack it, and show the stage's humanised name.

    Args:
        name: the stage's name.
        sec: its card section.

    Returns:
        The title.

    Examples:
        >>> section_title("linear_probes", {})
        'Linear probes'
    """
    return sec.get("title") or name.replace("_", " ").capitalize()


def stage_section(doc: dict[str, Any], name: str, sec: dict[str, Any], sections: Mapping[str, SectionBlocks]) -> Section:
    """The card section of stage ``name``; a stage missing from ``sections`` shows its status and figures only.

    Args:
        doc: the card document.
        name: the stage's name.
        sec: its card section.
        sections: renders each stage's section.

    Returns:
        The section, level 3, anchored ``sec-NAME``.
    """
    blocks: list[Block] = [Paragraph(f"status: {sec['status']}" + (" (cached)" if sec.get("cached") else "")
                                     + f", {sec.get('seconds', 0.0):.2f} s")]
    if sec["status"] != "ok":
        blocks.append(Failure(sec.get("error", "unknown error")))
    else:
        r = sec["result"]
        if name in sections:
            blocks += sections[name](doc, r)
        blocks += [Figure(f["path"], f["caption"]) for f in r.get("figures", [])]
    return Section(section_title(name, sec), blocks, level=3, anchor=f"sec-{name}")
