"""Self-contained HTML pieces for reports: escaped text, PNG data URIs, sortable tables, bar charts.

Every function returns an HTML string in which all caller text has been escaped; pictures are
embedded as ``data:image/png;base64`` URIs, so a page is one file that opens anywhere offline.

>>> page("A < B", [table(["unit", "iou"], [[1, 0.5], ["<x>", 0.25]], sortable=True)])[:16]
'<!DOCTYPE html>\\n'
>>> "&lt;x&gt;" in table(["unit"], [["<x>"]])
True
"""

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th.sortable{cursor:pointer;background:#f3f3f3}
th.sortable:after{content:" \\2195";color:#999}
img.thumb{image-rendering:pixelated;margin:1px;border:1px solid #ddd}
.muted{color:#777}
"""

# Sorts a table by the clicked column (numbers numerically, else text); data-v holds the sort key.
_SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function(t){
  t.querySelectorAll("th.sortable").forEach(function(th, col){
    th.addEventListener("click", function(){
      var body = t.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var asc = th.getAttribute("data-dir") !== "asc";
      th.setAttribute("data-dir", asc ? "asc" : "desc");
      rows.sort(function(a, b){
        var x = a.cells[col].getAttribute("data-v"), y = b.cells[col].getAttribute("data-v");
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
});
"""


def esc(value: Any) -> str:
    """Escape any value's text for HTML (quotes included)."""
    return html.escape(str(value), quote=True)


class Raw(str):
    """Already-safe HTML (e.g. an ``<img>`` built by :func:`img`); :func:`table` inserts it unescaped."""


def png_data_uri(array: np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URI for a (H, W) or (H, W, 3|4) uint8 array."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def img(array: np.ndarray, *, title: str = "", width: int | None = None) -> Raw:
    """An embedded ``<img>`` of an image array (title escaped)."""
    w = f' width="{int(width)}"' if width else ""
    return Raw(f'<img class="thumb" src="{png_data_uri(array)}" title="{esc(title)}" alt="{esc(title)}"{w}>')


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, sortable: bool = False,
          sort_keys: Sequence[Sequence[Any]] | None = None) -> str:
    """A table; cells are escaped unless :class:`Raw`. With ``sortable`` a click on a header sorts
    by that column, using ``sort_keys`` (same shape as ``rows``) or the cell text."""
    cls = ' class="sortable"' if sortable else ""
    th = "".join(f'<th{cls}>{esc(h)}</th>' for h in headers)
    body = []
    for r, row in enumerate(rows):
        cells = []
        for c, cell in enumerate(row):
            key = sort_keys[r][c] if sort_keys is not None else ("" if isinstance(cell, Raw) else cell)
            text = cell if isinstance(cell, Raw) else esc(_fmt(cell))
            cells.append(f'<td data-v="{esc(key)}">{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table{cls}><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def bar_chart(labels: Sequence[str], values: Sequence[float], *, title: str = "", width: int = 420,
              bar_height: int = 22, colour: str = "#4a7fb5") -> str:
    """A horizontal bar chart as inline SVG (labels and title escaped)."""
    top = max([float(v) for v in values] + [1e-12])
    label_w, h = 140, bar_height * len(labels) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img" '
             f'aria-label="{esc(title)}">', f'<title>{esc(title)}</title>']
    for i, (label, v) in enumerate(zip(labels, values)):
        y = 10 + i * bar_height
        bw = (width - label_w - 50) * float(v) / top
        parts.append(f'<text x="{label_w - 6}" y="{y + bar_height * 0.65:.1f}" text-anchor="end" '
                     f'font-size="12">{esc(label)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{bw:.1f}" height="{bar_height - 6}" fill="{esc(colour)}"/>')
        parts.append(f'<text x="{label_w + bw + 4:.1f}" y="{y + bar_height * 0.65:.1f}" font-size="12">'
                     f'{esc(_fmt(v))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def page(title: str, body: Sequence[str], *, intro: str = "") -> str:
    """A complete HTML document (title and intro escaped; ``body`` parts are HTML from this module)."""
    intro_html = f"<p>{esc(intro)}</p>" if intro else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>{intro_html}{"".join(body)}'
            f'<script>{_SORT_JS}</script></body></html>\n')


def heading(text: str, level: int = 2) -> str:
    return f"<h{level}>{esc(text)}</h{level}>"


def paragraph(text: str) -> str:
    return f"<p>{esc(text)}</p>"


def overlay(image: np.ndarray, mask: np.ndarray, *, colour: tuple[int, int, int] = (255, 220, 0),
            alpha: float = 0.55, dim: float = 0.35) -> np.ndarray:
    """An RGB picture with ``mask`` highlighted: outside it the image is dimmed, inside tinted.

    >>> overlay(np.zeros((2, 2, 3), np.uint8), np.eye(2, dtype=bool))[0, 0].tolist()
    [140, 121, 0]
    """
    rgb = image.astype(np.float32)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    tint = np.asarray(colour, np.float32)
    out = np.where(mask[..., None], (1 - alpha) * rgb + alpha * tint, rgb * dim)
    return np.clip(out, 0, 255).round().astype(np.uint8)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
