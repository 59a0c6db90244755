"""Progress bars that show on a terminal and stay quiet in logs and tests."""

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "", initial: int = 0,
             enabled: bool | None = None) -> Iterator[T]:
    """Wrap ``iterable`` in a progress bar when stderr is a terminal (or ``enabled=True``).

    >>> list(progress(range(3), enabled=False))
    [0, 1, 2]
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    return iter(tqdm(iterable, total=total, desc=desc, initial=initial, disable=not enabled,
                     dynamic_ncols=True, leave=False))
