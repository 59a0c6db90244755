"""Matplotlib figures that never touch global state: no pyplot, no ``matplotlib.use``.

Each figure gets its own Agg canvas, so a library plot renders to PNG the same way whatever
backend the user chose (an interactive one, a notebook's inline backend) and leaves it unchanged.

>>> fig = new_figure(figsize=(2, 1))
>>> ax = fig.subplots()
>>> _ = ax.plot([0, 1], [1, 0])
>>> save_figure(fig, "curve.png", dpi=50)    # doctest: +SKIP
PosixPath('curve.png')
"""

import io
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from inspectnet.core.storage import atomic_write_bytes


def new_figure(**kwargs: Any) -> Figure:
    """A ``Figure(**kwargs)`` drawn by its own Agg canvas (a renderer for layout, PNG output).

    Args:
        **kwargs: keyword arguments of ``matplotlib.figure.Figure`` (``figsize``, ``dpi``, ...).

    Returns:
        The figure, with no pyplot state behind it.

    Examples:
        >>> new_figure(figsize=(2, 1)).get_size_inches().tolist()
        [2.0, 1.0]
    """
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, **kwargs: Any) -> Path:
    """Write ``fig`` to ``path`` atomically (parent folders created).

    Args:
        fig: the figure.
        path: the output file; its suffix names the format (PNG when it has none).
        **kwargs: keyword arguments of ``Figure.savefig`` (``dpi``, ``bbox_inches``, ...).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        InspectnetError: the file cannot be written (see :func:`~inspectnet.core.storage.atomic_write_bytes`).

    Examples:
        >>> import tempfile
        >>> save_figure(new_figure(figsize=(1, 1)), Path(tempfile.mkdtemp()) / "a.png", dpi=10).stat().st_size > 0
        True
    """
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", **kwargs)
    return atomic_write_bytes(path, buf.getvalue())
