"""Writing a labelled dataset to disk as an image folder (``ROOT/CLASS/NAME.png``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from inspectnet.core.errors import InspectnetError

if TYPE_CHECKING:
    from inspectnet.data.datasets import ImageDataset


def write_folder(dataset: ImageDataset, root: str | Path, *, limit: int | None = None) -> list[Path]:
    """Write a labelled dataset as an image folder, ``ROOT/CLASS/NAME.png``.

    That is the layout :class:`FolderDataset` (and ``ImageNet``) uses; PNG keeps every pixel, so the
    folder holds the same images.

    Args:
        dataset: a labelled dataset.
        root: the folder to write; it must be new or empty.
        limit: write only the first ``limit`` samples.

    Returns:
        The files written.

    Raises:
        InspectnetError: ``limit`` is below 1, the data is unlabelled, or ``root`` exists and is not empty.

    Examples:
        >>> from inspectnet.data import load_data
        >>> files = write_folder(load_data("photos:test?n=8"), "data/photos_test")   # doctest: +SKIP
        >>> sorted({f.parent.name for f in files})                                    # doctest: +SKIP
        ['n02123045', 'n03773504', 'n04485082', 'n07920052']
    """
    root = Path(root)
    if limit is not None and limit < 1:
        raise InspectnetError(f"--limit must be at least 1, got {limit}")
    if not dataset.labelled:
        raise InspectnetError(f"data {dataset.spec!r} is unlabelled; an image folder needs a class per image")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise InspectnetError(f"--out {root} exists and is not an empty folder; choose a new one")
    n = len(dataset) if limit is None else min(limit, len(dataset))
    written: list[Path] = []
    for i in range(n):
        label = int(dataset.labels[i])
        if label < 0:
            continue
        stem = re.sub(r"[^\w.-]+", "_", Path(dataset.name(i)).stem).strip("._") or "image"
        path = root / dataset.class_names[label] / f"{stem}.png"
        if path in written or path.exists():
            path = path.with_name(f"{stem}_{i}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        dataset.image(i).save(path)
        written.append(path)
    return written
