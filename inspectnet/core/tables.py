r"""Numbers and tables as text: one number format, Markdown tables with escaped cells, CSV.

Every report of inspectnet (the model card, ``compare.md``, the sparsity, linear-probe and SAN
tables, dissection's CSV) formats through these three functions, so one number reads the same
everywhere and no user string (a class name, a layer name) can break a table.

>>> print(markdown_table(["layer", "hoyer"], [["conv_1", 0.123456], ["fc", None]]))
| layer | hoyer |
|---|---|
| conv\_1 | 0.1235 |
| fc | n/a |
>>> csv_text(["concept", "iou"], [['say "hi", bye', 0.5]])
'concept,iou\n"say ""hi"", bye",0.5\n'
"""

import csv
import html
import io
import math
import numbers
import re
from collections.abc import Sequence
from typing import Any

from inspectnet.core.errors import InspectnetError

_MARKDOWN_META = re.compile(r"([\\`*_{}\[\]#|~])")


def format_value(value: Any, digits: int = 4) -> str:
    """A cell's text: ``n/a`` for None, integers as they are, other reals with ``digits`` decimals.

    A non-zero real that ``digits`` decimals would show as 0 gets ``digits`` significant digits instead.

    Args:
        value: a number, None or any other value (shown with ``str``).
        digits: decimals (or significant digits for tiny values).

    Returns:
        The cell's text.

    Examples:
        >>> [format_value(v) for v in (None, 3, 0.5, 2.5e-7, float("nan"), "x")]
        ['n/a', '3', '0.5000', '2.5e-07', 'nan', 'x']
        >>> format_value(1.23456, digits=2)
        '1.23'
    """
    if value is None:
        return "n/a"
    if isinstance(value, numbers.Integral):
        return str(value)
    if isinstance(value, numbers.Real):
        v = float(value)
        if math.isfinite(v) and 0 < abs(v) < 0.5 * 10.0 ** -digits:
            return f"{v:.{digits}g}"
        return f"{v:.{digits}f}"
    return str(value)


def format_percent(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage (``n/a`` for None).

    Args:
        value: a fraction (1.0 is 100 %), or None.
        digits: decimals of the percentage.

    Returns:
        The text, e.g. ``"94.3 %"``.

    Examples:
        >>> format_percent(0.9433), format_percent(1.0), format_percent(None)
        ('94.3 %', '100.0 %', 'n/a')
    """
    return "n/a" if value is None else f"{100 * float(value):.{digits}f} %"


def escape_markdown(text: Any) -> str:
    r"""Escape text for Markdown (a newline becomes a space, as it would end a table row).

    HTML entities are escaped first (raw HTML renders on Hugging Face and GitHub), then Markdown
    metacharacters.

    Args:
        text: any value (shown with ``str``).

    Returns:
        The escaped text.

    Examples:
        >>> escape_markdown("<script>*x*|")
        '&lt;script&gt;\\*x\\*\\|'
    """
    return _MARKDOWN_META.sub(r"\\\1", html.escape(str(text), quote=False)).replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, digits: int = 4) -> str:
    """A Markdown table (no trailing newline) whose cells cannot break it.

    Cells go through :func:`format_value` and :func:`escape_markdown`, so a ``|`` in a name stays
    inside its cell.

    Args:
        headers: the column names.
        rows: the rows, one cell per header.
        digits: decimals of real numbers (see :func:`format_value`).

    Returns:
        The table's Markdown.

    Raises:
        InspectnetError: a row has more or fewer cells than there are headers.

    Examples:
        >>> print(markdown_table(["layer", "hoyer"], [["fc", 0.5]]))
        | layer | hoyer |
        |---|---|
        | fc | 0.5000 |
        >>> markdown_table(["a"], [[1, 2]])
        Traceback (most recent call last):
        ...
        inspectnet.core.errors.InspectnetError: table row 0 has 2 cells; expected 1 (one per header: a)
    """
    _check_widths(headers, rows)
    lines = ["| " + " | ".join(escape_markdown(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(escape_markdown(format_value(c, digits)) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def csv_text(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    r"""CSV (``csv`` module quoting, ``\n`` line ends) with values written as given.

    Full precision, None as an empty field, so a spreadsheet gets the exact numbers.

    Args:
        headers: the column names.
        rows: the rows, one value per header.

    Returns:
        The CSV text, header line first.

    Raises:
        InspectnetError: a row has more or fewer values than there are headers.

    Examples:
        >>> csv_text(["a", "b"], [[1, None]])
        'a,b\n1,\n'
    """
    _check_widths(headers, rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(rows)
    return buf.getvalue()


def _check_widths(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    for i, row in enumerate(rows):
        if len(row) != len(headers):
            raise InspectnetError(f"table row {i} has {len(row)} cells; expected {len(headers)} "
                                  f"(one per header: {', '.join(map(str, headers))})")
