"""Pictures for HTML pages: PNG data URIs, thumbnails, bar-chart geometry, mask overlays.

The pages themselves are templates (``templates/*.html.j2``, rendered by
:mod:`inspectnet.reports.render`); this module makes what they embed. Pictures become
``data:image/png;base64`` URIs, so a page is one file that opens anywhere offline.

>>> thumb = img(np.zeros((2, 2), np.uint8), title='<x "y">')
>>> thumb.startswith('<img class="thumb" src="data:image/png;base64,') and 'title="&lt;x &quot;y&quot;&gt;"' in thumb
True
"""

import base64
import dataclasses
import io
from collections.abc import Sequence

import numpy as np
from markupsafe import Markup

from inspectnet.reports.render import escape_html


def png_data_uri(array: np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URI for an image array.

    Args:
        array: a (H, W) or (H, W, 3|4) uint8 array.

    Returns:
        The URI.

    Examples:
        >>> png_data_uri(np.zeros((1, 1), np.uint8))[:22]
        'data:image/png;base64,'
    """
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def img(array: np.ndarray, *, title: str = "", width: int | None = None) -> Markup:
    """An embedded ``<img>`` of an image array (title escaped), ready to sit in a table cell.

    Args:
        array: a (H, W) or (H, W, 3|4) uint8 array.
        title: the tooltip.
        width: the displayed width in pixels (None: the image's).

    Returns:
        The tag as ``Markup``.
    """
    w = f' width="{int(width)}"' if width else ""
    return Markup(f'<img class="thumb" src="{png_data_uri(array)}" title="{escape_html(title)}" '
                  f'alt="{escape_html(title)}"{w}>')


@dataclasses.dataclass(frozen=True)
class Bar:
    """One bar of a :class:`BarChart`: its label, value, row position and drawn width."""
    label: str
    value: float
    y: int
    width: str
    text_y: str
    value_x: str


@dataclasses.dataclass(frozen=True)
class BarChart:
    """A horizontal bar chart's geometry; ``_macros.html.j2``'s ``bar_chart`` draws it as inline SVG."""

    title: str
    bars: list[Bar]
    width: int
    height: int
    label_width: int
    bar_height: int
    colour: str


def bar_chart(labels: Sequence[str], values: Sequence[float], *, title: str = "", width: int = 420,
              bar_height: int = 22, colour: str = "#4a7fb5") -> BarChart:
    """Bars scaled to the largest value, one row of ``bar_height`` pixels per label.

    Args:
        labels: one label per bar.
        values: one value per bar.
        title: the chart's title.
        width: the chart's width in pixels.
        bar_height: pixels per row.
        colour: the bars' colour.

    Returns:
        The chart the templates draw.

    Examples:
        >>> [b.width for b in bar_chart(["a", "b"], [2, 1]).bars]
        ['230.0', '115.0']
    """
    top = max([float(v) for v in values] + [1e-12])
    label_width = 140
    bars = []
    for i, (label, v) in enumerate(zip(labels, values)):
        y = 10 + i * bar_height
        bw = (width - label_width - 50) * float(v) / top
        bars.append(Bar(label=label, value=v, y=y, width=f"{bw:.1f}", text_y=f"{y + bar_height * 0.65:.1f}",
                        value_x=f"{label_width + bw + 4:.1f}"))
    return BarChart(title=title, bars=bars, width=width, height=bar_height * len(labels) + 30,
                    label_width=label_width, bar_height=bar_height, colour=colour)


def overlay(image: np.ndarray, mask: np.ndarray, *, colour: tuple[int, int, int] = (255, 220, 0),
            alpha: float = 0.55, dim: float = 0.35) -> np.ndarray:
    """An RGB picture with ``mask`` highlighted: outside it the image is dimmed, inside tinted.

    Args:
        image: a (H, W) or (H, W, 3) uint8 picture.
        mask: an (H, W) bool mask.
        colour: the tint.
        alpha: the tint's opacity inside the mask.
        dim: how much the image is darkened outside the mask (0: not at all).

    Returns:
        The (H, W, 3) uint8 picture.

    Examples:
        >>> overlay(np.zeros((2, 2, 3), np.uint8), np.eye(2, dtype=bool))[0, 0].tolist()
        [140, 121, 0]
    """
    rgb = image.astype(np.float32)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    tint = np.asarray(colour, np.float32)
    out = np.where(mask[..., None], (1 - alpha) * rgb + alpha * tint, rgb * dim)
    return np.clip(out, 0, 255).round().astype(np.uint8)
