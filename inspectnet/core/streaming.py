"""Row blocks: how analyses read a probe record's memory-mapped arrays with bounded memory.

A record holds N rows; an analysis that needs all of them (a per-class sum, an accuracy, a
prediction per row) reads them block by block, so its memory is O(block + result), never O(N·C).

>>> [(s.start, s.stop) for s in row_blocks(10, 4)]
[(0, 4), (4, 8), (8, 10)]
"""

from collections.abc import Iterator

BLOCK_ROWS = 4096


def row_blocks(n: int, size: int = BLOCK_ROWS) -> Iterator[slice]:
    """Consecutive slices covering ``range(n)``, at most ``size`` rows each.

    Args:
        n: the number of rows.
        size: the most rows per block.

    Yields:
        One slice per block, in order.

    Examples:
        >>> list(row_blocks(5, 2))
        [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))
