"""Progress bars that show on a terminal and stay quiet in logs and tests."""

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "", initial: int = 0,
             enabled: bool | None = None) -> Iterator[T]:
    """Wrap ``iterable`` in a progress bar when stderr is a terminal (or ``enabled=True``).

    Args:
        iterable: the items.
        total: how many items there are, when ``iterable`` has no length.
        desc: the bar's label.
        initial: items already done (a resumed pass).
        enabled: show the bar; None shows it when stderr is a terminal.

    Returns:
        An iterator over the same items.

    Examples:
        >>> list(progress(range(3), enabled=False))
        [0, 1, 2]
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    return iter(tqdm(iterable, total=total, desc=desc, initial=initial, disable=not enabled,
                     dynamic_ncols=True, leave=False))
