"""The neutral view a report template renders: sections made of a few kinds of blocks.

A block says *what* to show (a paragraph, a table, a figure, preformatted text, a failure reason,
a link to a file, a bullet list), never *how*; ``card.md.j2`` and ``card.html.j2`` render the same blocks, so the
Markdown and the HTML carry the same content. Text in blocks is raw: the templates escape it.

>>> Section("Caveats", [BulletList(["in-sample numbers"])]).blocks[0].kind
'bullets'
"""

import dataclasses
from typing import Any, ClassVar


@dataclasses.dataclass(frozen=True)
class Paragraph:
    """A paragraph of raw text."""
    text: str
    kind: ClassVar[str] = "paragraph"


@dataclasses.dataclass(frozen=True)
class Table:
    """Rows of cells (numbers are formatted by the template).

    ``sortable`` lets the HTML sort by a clicked column, by ``sort_keys`` (same shape as ``rows``) where
    given, else by the cell.
    """

    headers: list[str]
    rows: list[list[Any]]
    sortable: bool = False
    sort_keys: list[list[Any]] | None = None
    kind: ClassVar[str] = "table"


@dataclasses.dataclass(frozen=True)
class Figure:
    """A PNG by its path relative to the report's folder: Markdown links it, HTML embeds it."""

    path: str
    caption: str
    kind: ClassVar[str] = "figure"


@dataclasses.dataclass(frozen=True)
class Preformatted:
    """Text shown as it is, in a fixed-width block (e.g. a decision tree)."""
    text: str
    kind: ClassVar[str] = "preformatted"


@dataclasses.dataclass(frozen=True)
class Failure:
    """Why something could not be shown, e.g. ``This section failed: <error>``."""

    reason: str
    what: str = "This section failed"
    kind: ClassVar[str] = "failure"


@dataclasses.dataclass(frozen=True)
class Download:
    """A file in the report's folder offered as a link, not shown inline (e.g. the full rule list)."""

    path: str
    text: str
    kind: ClassVar[str] = "download"


@dataclasses.dataclass(frozen=True)
class BulletList:
    """A list of items, one line each."""
    items: list[str]
    kind: ClassVar[str] = "bullets"


Block = Paragraph | Table | Figure | Preformatted | Failure | Download | BulletList


@dataclasses.dataclass(frozen=True)
class Section:
    """A titled run of blocks.

    ``level`` is 2 or 3 (Markdown ``##``/``###``, HTML ``h2``/``h3``); ``anchor`` is the HTML id that the
    page's navigation links to (None: not in the navigation).
    """

    title: str
    blocks: list[Block]
    level: int = 2
    anchor: str | None = None
